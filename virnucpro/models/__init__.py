"""The models directory (CONTRACTS.md "Models directory"), in three modules imported one by one:

- `store`: find, verify and describe models (manifest, checksums, `locate`, `check`); imports no
  other module of this package;
- `download`: the pinned sources, verified downloads and `ensure` (locate, downloading what is
  missing); imports `store`;
- `tiny`: seeded random models in the real formats, for tests; imports `store`.

This package itself imports none of them, so `import virnucpro.models.store` stays light.
"""
