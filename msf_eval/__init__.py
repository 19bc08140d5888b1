"""msf_eval: sample quality of a cascade (FID with a pluggable feature extractor, class accuracy)."""
