"""What a model takes and returns: tensor names, datatypes and shapes (-1 where a dimension is dynamic)."""

from __future__ import annotations

from dataclasses import dataclass

from kubeserve.runtime.datatypes import Datatype


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # the model's own shape, batch dimension included; -1 is dynamic

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec."""
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape, strict=True):  # noqa: SIM110  (on every request's path: all() costs more)
            if want != got and want != -1:
                return False
        return True


@dataclass(frozen=True, slots=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Every input and output leads with a dynamic dimension, so requests can be stacked along it."""
        tensors = self.inputs + self.outputs
        return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)
