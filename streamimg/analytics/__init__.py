# Per-frame analytics: palette, detection, classification, transforms, annotation.
