"""Denoising: Noise2Void (N2V2) self-supervision on noisy frames, virtual or the user's own."""
