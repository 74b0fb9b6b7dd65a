"""`evs bench SUITE`: compositions of any registry models run on a suite's clips through the normal runner, every
run measured, summarised with 95% intervals and paired differences, and drawn against its cost."""
