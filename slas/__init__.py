"""slas: RL post-training of text-to-image models with Super-Linear Advantage Shaping."""

__version__ = "0.1.0"
