"""Named YAML configurations shipped with mvclam (``small`` is the CPU default, ``paper`` the published sizes)."""
