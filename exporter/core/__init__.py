"""The pure core: event model, pod snapshots, lifecycle detection. No I/O, clock injected."""
