"""The conditional VAE: its networks, its maths, its optimizer, and the `train` stage."""
