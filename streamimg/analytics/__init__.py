# Per-frame analytics: palette, detection, classification, annotation.
