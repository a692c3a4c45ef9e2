"""Put first on PYTHONPATH to run the code as on a platform where cavro has no wheel (arm64,
Python 3.13): `import cavro` fails, as it would there, in this process and in every child."""

raise ImportError("cavro hidden by tests/no_cavro (no wheel on this platform)")
