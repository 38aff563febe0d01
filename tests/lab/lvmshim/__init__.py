"""LVM shim of the two-host lab: real lvm2 metadata, loop devices for data.

See README.md in this directory. The shims in tests/lab/shims import
``lvmshim.cli`` with /usr/bin/python3 (stdlib only).
"""
