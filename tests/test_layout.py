"""The source layout rules that the build depends on (DESIGN.md, "Layout").

torch's ninja build names object files by folder and stem, so a `nms.cu` beside
`nms.cpp` gives "multiple rules generate .../nms.o" and breaks every CUDA
install, while a CPU-only build never notices. These checks run everywhere.
"""
import collections
import pathlib
import re

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
COMPILED_SUFFIXES = (".cpp", ".cu")


def compiled_sources():
    return sorted(p for p in CSRC.rglob("*") if p.suffix in COMPILED_SUFFIXES)


def test_no_two_compiled_sources_share_an_object_name():
    by_object = collections.defaultdict(list)
    for path in compiled_sources():
        by_object[path.with_suffix(".o")].append(path.name)
    clashes = {str(o.relative_to(CSRC)): names for o, names in by_object.items() if len(names) > 1}
    assert not clashes, f"these sources compile to the same object file: {clashes}"


def test_cuda_kernels_follow_the_naming_rule():
    """cuda/<op>_kernel.cu holds the kernels, cuda/<op>.cpp registers them, and each registration file
    has its kernel file (and the reverse), so a reader finds both by the op's name."""
    cuda = CSRC / "cuda"
    kernels = {p.name[: -len("_kernel.cu")] for p in cuda.glob("*.cu")}
    bad = [p.name for p in cuda.glob("*.cu") if not p.name.endswith("_kernel.cu")]
    assert not bad, f"CUDA sources must be named <op>_kernel.cu: {bad}"
    registrations = {p.stem for p in cuda.glob("*.cpp")}
    assert kernels == registrations, (
        f"kernel files without a registration file: {sorted(kernels - registrations)}; "
        f"registration files without a kernel file: {sorted(registrations - kernels)}")


def registered_ops(source):
    return set(re.findall(r'm\.impl\(\s*"(\w+)"', source))


@pytest.mark.parametrize("registration", sorted((CSRC / "cuda").glob("*.cpp")), ids=lambda p: p.name)
def test_cuda_registration_file_registers_for_the_cuda_key(registration):
    text = registration.read_text()
    assert "TORCH_LIBRARY_IMPL(retinaface, CUDA," in text, f"{registration.name} registers nothing for CUDA"
    assert registered_ops(text), f"{registration.name} registers no op"


def test_every_schema_has_a_cpu_and_a_cuda_kernel_in_the_sources():
    """The static half of the dispatcher check that .ci/run makes against a real CUDA build."""
    schemas = set(re.findall(r'm\.def\(\s*"(\w+)\(', (CSRC / "ops.cpp").read_text()))
    assert schemas, "no schema found in csrc/ops.cpp"
    cpu = set().union(*(registered_ops(p.read_text()) for p in (CSRC / "cpu").glob("*.cpp")))
    cuda = set().union(*(registered_ops(p.read_text()) for p in (CSRC / "cuda").glob("*.cpp")))
    assert schemas - cpu == set(), f"schemas without a CPU kernel: {sorted(schemas - cpu)}"
    assert schemas - cuda == set(), f"schemas without a CUDA kernel: {sorted(schemas - cuda)}"
