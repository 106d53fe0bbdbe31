"""Offline images: dockmesh/toolbox (busybox-static) and dockmesh/python (debootstrap)."""
