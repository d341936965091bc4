"""The emulated edge network: network namespaces + veth + tc tbf (testbed.py), shaping a
real board's interface (shaping.py), and CPU quotas for a slower device (cpuquota.py)."""
