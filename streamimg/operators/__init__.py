# Spatial operators on frames and volumes (exports are managed by the package maintainer).
