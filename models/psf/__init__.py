"""The rig's PSF calibrated on bead z-stacks (a pupil model fitted to the beads)."""
