"""Per-class differentiable augmentation policies ``A_y`` and the policy file format.

- :class:`ClassPolicy` / :func:`create_policy`: class-conditional, batched, differentiable augmentation
  (kornia-style relaxed Bernoulli gates and reparameterised magnitudes), optionally shared across classes
  through a basis ``D [C, k]`` (``generic``: one policy for all classes); functional ops on kornia in
  ``ab_plugin.policies._ops`` and ``ab_plugin.policies._cutout``.
- :class:`PolicyFile`, :func:`save_policy`, :func:`load_policy`: versioned JSON export / import (data only).
- :class:`PerClassTransform`, :class:`PerClassTransformV2`: apply an exported policy to tensor batches or
  in a torchvision v2 pipeline.
- :func:`list_zoo`: exported policies shipped in ``policies/zoo``.
- :func:`policy_table`, :func:`plot_policy_heatmap`: display helpers for the CLI.
- :func:`policy_movement`: how far a searched policy moved from its start, per class and op.
"""

from ._display import plot_policy_heatmap, policy_table
from ._file import (
    FORMAT_VERSION,
    LOSS_KEYS,
    PolicyFile,
    PolicyFileError,
    check_num_classes,
    load_policy,
    make_provenance,
    parse_policy,
    policy_from_dict,
    policy_from_module,
    policy_to_module,
    save_policy,
)
from ._movement import policy_movement
from ._ops import APPLY_ORDER, OPS, OpSpec
from ._policy import DEFAULT_OPS, LEARNED_KINDS, POLICIES, POLICY_KINDS, ClassPolicy, create_policy, list_policies
from ._transforms import PerClassTransform, PerClassTransformV2
from ._zoo import ZOO_ENV, list_zoo, zoo_dir

__all__ = [
    "APPLY_ORDER",
    "DEFAULT_OPS",
    "FORMAT_VERSION",
    "LEARNED_KINDS",
    "LOSS_KEYS",
    "OPS",
    "POLICIES",
    "POLICY_KINDS",
    "ZOO_ENV",
    "ClassPolicy",
    "OpSpec",
    "PerClassTransform",
    "PerClassTransformV2",
    "PolicyFile",
    "PolicyFileError",
    "check_num_classes",
    "create_policy",
    "list_policies",
    "list_zoo",
    "load_policy",
    "make_provenance",
    "parse_policy",
    "plot_policy_heatmap",
    "policy_from_dict",
    "policy_from_module",
    "policy_movement",
    "policy_table",
    "policy_to_module",
    "save_policy",
    "zoo_dir",
]
