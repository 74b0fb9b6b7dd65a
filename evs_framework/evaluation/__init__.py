"""Measuring outputs: metrics, `evs eval` and `evs compare`, contact sheets, the VBench bridge."""
