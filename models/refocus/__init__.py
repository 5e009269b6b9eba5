"""Virtual refocusing (Deep-Z style): z-stacks, the delta-z-conditioned UNet and its training."""
