"""apk (Alpine, Wolfi/Chainguard): ocipatch's own pure-Python reader and writer of apk's formats.

No apk-tools binary is needed. Modules: version (apk's version rules), records (the `X:value`
fields, dependencies, Q1 checksums), db (installed DB, world, repositories, triggers,
scripts.tar), package (.apk v2 files), index (APKINDEX.tar.gz), signing (the RSA signatures
both carry). docs/apk.md describes the formats and what is verified.
"""
