"""Per-class differentiable augmentation policies ``A_y`` and the policy file format.

- :class:`ClassPolicy` / :func:`create_policy` (:func:`list_policies`): class-conditional, batched,
  differentiable augmentation (kornia-style relaxed Bernoulli gates and reparameterised magnitudes),
  optionally shared across classes through a basis ``D [C, k]`` (``generic``: one policy for all classes);
  :data:`OPS`: the operations, with their magnitude ranges.
- :class:`CudaPolicy` (``create_policy("cuda", C)``): CUDA's per-class curriculum of augmentation strength
  levels on the same ops, moved after every epoch by the model's accuracy on augmented training images.
- :class:`BankPolicy` (``create_policy("bank", C)``): per-class mixture weights over a bank of CUDA strengths,
  learned through the expected training loss (PDA whose hypergradient the head engine takes exactly).
- :class:`PolicyFile`, :func:`save_policy`, :func:`load_policy` (:class:`PolicyFileError`): versioned JSON
  export / import (data only, format :data:`FORMAT_VERSION`); :func:`policy_from_module` /
  :func:`policy_to_module` convert between a :class:`ClassPolicy` or :class:`BankPolicy` and the file's
  ``augmentation`` entry (kind ``ops`` or ``bank``).
- :class:`PerClassTransform`, :class:`PerClassTransformV2`: apply an exported policy of either kind to tensor
  batches or in a torchvision v2 pipeline.
- :func:`list_zoo`: exported policies shipped in ``policies/zoo``.
- :func:`policy_movement`: how far a searched policy moved from its start, per class and op.
"""

from ._bank import BankPolicy
from ._cuda import CudaPolicy
from ._file import (
    FORMAT_VERSION,
    PolicyFile,
    PolicyFileError,
    load_policy,
    policy_from_module,
    policy_to_module,
    save_policy,
)
from ._movement import policy_movement
from ._ops import OPS
from ._policy import (
    ClassPolicy,
    create_policy,
    list_policies,
)
from ._transforms import PerClassTransform, PerClassTransformV2
from ._zoo import list_zoo

__all__ = [
    "FORMAT_VERSION",
    "OPS",
    "BankPolicy",
    "ClassPolicy",
    "CudaPolicy",
    "PerClassTransform",
    "PerClassTransformV2",
    "PolicyFile",
    "PolicyFileError",
    "create_policy",
    "list_policies",
    "list_zoo",
    "load_policy",
    "policy_from_module",
    "policy_movement",
    "policy_to_module",
    "save_policy",
]
