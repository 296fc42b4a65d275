"""The world: a small text-to-image setting of coloured shapes (renderer, captions, verifier)."""
