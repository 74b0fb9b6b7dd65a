"""`evs ui`: a local web app over EVS. `framework` is the UI's one door into EVS's internals; `session` holds the
page's state, `tables` turns records into what the page shows, `results` what a run leaves, `app` the page."""
