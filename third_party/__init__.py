"""Converters from torch checkpoints to jaxflow_ad backbone weights (the only place torch may be used).

Entry point: ``python -m third_party.convert --arch ARCH --src CKPT --dst weights/NAME``; see README.md.
"""
