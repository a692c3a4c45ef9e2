"""Day one in AEP: the XDM artifacts the mapping needs (``xdm export``) and the idempotent set-up
of the AEP side (``provision``). See docs/going-live.md."""
