"""Set-up compiles every numba kernel the loop calls, so that no timed stage compiles one."""

import inspect
import re

from numba.core.registry import CPUDispatcher

from nodestore.chem import _kernels, matcher
from nodestore.chem.precompile import precompile


def _dispatchers(module):
    return {name: f for name, f in inspect.getmembers(module) if isinstance(f, CPUDispatcher)}


def test_precompile_compiles_every_matcher_kernel_and_the_quests_ones_the_loop_uses():
    import quests.descriptor
    import quests.entropy

    assert precompile() > 0
    # the kernels called from Python (the others are compiled into these)
    called = set(re.findall(r"_kernels\.(\w+)\(", inspect.getsource(matcher)))
    assert len(called) >= 4 and called <= set(_dispatchers(_kernels))
    missing = sorted(name for name in called if not getattr(_kernels, name).signatures)
    assert missing == [], f"precompile leaves {missing} to be compiled inside a loop stage"
    assert quests.descriptor.descriptor_pbc.signatures
    used = [f for name, f in _dispatchers(quests.entropy).items() if f.signatures]
    assert used, "no QUESTS kernel sum was compiled"
