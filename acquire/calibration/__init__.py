"""Calibration sessions on the rig: plan the positions (plan), set up the virtual microscope a
session runs on (rig), acquire them (run), store them with a checksummed manifest (store; the
manifest schema is ``livescope.session``), register pair members (registration,
session_registration) and report on their quality (qa)."""
