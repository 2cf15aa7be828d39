"""optkit's own descriptor pool for Triton's ``inference.*`` messages (see ``_generate.py``)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
