"""Hardware profiles: device fingerprint, measured kernel timings and the fitted cost model."""
