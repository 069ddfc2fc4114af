"""What one competition needs (its layout, heads, synthetic sample), and the embedded demo."""
