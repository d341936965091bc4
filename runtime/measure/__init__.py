"""Measurement: the one timed-repeat loop (timing.py), one run (run.py), profiling
sweeps into perf maps (spec.py -> driver.py -> worker.py -> rawlog.py -> mapbuild.py;
cluster.py on real boards under torchrun), the host check and the energy meters."""
