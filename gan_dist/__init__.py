"""gan_dist: distributed GAN training (DDP, coordinated WGAN-GP critic loop, exact resume)."""
__version__ = "0.1.0"
