"""Load a model from any of the supported layouts and describe its inputs and outputs.

Supported: Keras `.keras`, legacy Keras `.h5`, TensorFlow SavedModel directories (a
signature, `serving_default` by default) and TensorFlow-Serving base directories whose
numeric sub-directories are versions (the highest number wins unless one is asked for).
TensorFlow is imported inside the functions so that `batchpredict --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchpredict.errors import ModelError

# Re-exported: callers describe a loaded model with them.
from batchpredict.tensors import ResolvedModelPath as ResolvedModelPath
from batchpredict.tensors import TensorInfo as TensorInfo

DEFAULT_SIGNATURE = "serving_default"


# Patterns in Keras' deserialization errors that name the class or function it could not
# find; the first one that matches wins, because Keras wraps the inner error in outer ones.
_MISSING_OBJECT_PATTERNS = (
    re.compile(r"Could not locate (?:class|function) '([^']+)'"),
    re.compile(r"Unknown [\w ]+: '([^']+)'"),
    re.compile(r"Could not interpret [\w ]+ identifier: \{[^{}]*'config': '([^']+)'"),
    re.compile(r"Could not interpret [\w ]+ identifier: \{[^{}]*'class_name': '([^']+)'"),
    re.compile(r"Could not interpret [\w ]+ identifier: '?([^'\s]+)"),
)
# A plain Python function used as an initializer, as Keras 2.13+ writes it into configs.
_FUNCTION_INITIALIZER = re.compile(
    r"Could not interpret initializer identifier: \{'module': 'builtins', "
    r"'class_name': 'function', 'config': '([^']+)'"
)

# Known TensorFlow 1 load failures, explained in words a user can act on.
_TF1_HINTS = (
    ("_ref", "it uses TensorFlow 1 reference variables, which TensorFlow 2 functions reject"),
    ("Shape must be", "its signatures declare tensor shapes that contradict its graph"),
    ("Shapes must be", "its signatures declare tensor shapes that contradict its graph"),
)
#: Longest cause quoted from a TensorFlow or Keras error (some quote whole node definitions).
_MAX_REASON = 200


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model reduced to what prediction needs: named tensors in, named tensors out."""

    source: ResolvedModelPath
    #: The SavedModel signature used; None for Keras models.
    signature: str | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    #: Traceable inside tf.function: {input name: tensor} -> {output name: tensor}.
    call: Callable[[dict[str, Any]], dict[str, Any]]
    #: How the model returns its outputs: "single" (one tensor), "list" or "dict".
    output_structure: str = "single"

    def call_on(self, device: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """`call` on a replica whose weights live on `device` (Keras models); a SavedModel
        signature's variables stay where they were loaded and are read from there."""
        if isinstance(self.call, _KerasCall):
            return self.call.copy_on(device)
        return self.call


# --------------------------------------------------------------------------- resolving


def resolve_model_path(path: str, version: int | None = None) -> ResolvedModelPath:
    """Find which kind of model `path` holds and, for a TF-Serving base dir, which version."""
    # Here rather than in the callers, so each Ray worker fills its own node's cache.
    from batchpredict.model_cache import fetch

    return fetch(path, version)


# --------------------------------------------------------------------------- loading


def load_model(
    path: str,
    *,
    signature: str = DEFAULT_SIGNATURE,
    version: int | None = None,
    unsafe: bool = False,
) -> LoadedModel:
    """Load a Keras file or a SavedModel signature as named tensors in, named tensors out."""
    source = resolve_model_path(path, version)
    if source.kind == "saved_model":
        return _load_saved_model(source, signature)
    if signature != DEFAULT_SIGNATURE:
        raise ModelError(
            f"signature {signature!r} was asked for, but {path} is a Keras model: "
            "signatures only exist in SavedModels"
        )
    return _load_keras(source, unsafe=unsafe)


def _tensor_info(name: str, dtype: Any, shape: Any) -> TensorInfo:
    """Describe one tensor with NumPy dtype names and a plain shape tuple."""
    import tensorflow as tf

    tf_dtype = tf.as_dtype(dtype)
    dtype_name = "string" if tf_dtype == tf.string else tf_dtype.name
    tf_shape = tf.TensorShape(shape)
    if tf_shape.rank is None:
        return TensorInfo(name, dtype_name, (), rank_known=False)
    return TensorInfo(name, dtype_name, tuple(tf_shape.as_list()))


def _first_reason(error: BaseException) -> str:
    """Pick the line of a (TensorFlow) error message that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines()]
    for line in lines:
        # TensorFlow wraps the cause in headers ("Graph execution error:") and node traces.
        if line and not line.endswith(":") and not line.startswith(("File ", "[[")):
            return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."
    return type(error).__name__


# ---- Keras


@dataclass(frozen=True, eq=False)
class _KerasCall:
    """Call a Keras model with named tensors, in the input structure it was built with."""

    #: Holding the model here keeps it (and its variables) alive as long as the call.
    model: Any
    input_structure: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def copy_on(self, device: str) -> _KerasCall:
        """The same call on a copy of the model whose weights live on `device` (a model
        replica), or this call if Keras cannot rebuild the model from its config."""
        import keras
        import tensorflow as tf

        with tf.device(device):
            try:
                clone = keras.models.clone_model(self.model)
                clone.set_weights(self.model.get_weights())
            except (ValueError, TypeError, NotImplementedError):
                return self
        return dataclasses.replace(self, model=clone)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the model in inference mode and name its outputs."""
        args: Any
        if self.input_structure == "dict":
            args = {name: inputs[name] for name in self.input_names}
        elif self.input_structure == "list":
            args = [inputs[name] for name in self.input_names]
        else:
            args = inputs[self.input_names[0]]
        result = self.model(args, training=False)
        if isinstance(result, Mapping):
            return {name: result[name] for name in self.output_names}
        if isinstance(result, list | tuple):
            return dict(zip(self.output_names, result, strict=True))
        return {self.output_names[0]: result}


def _load_keras(source: ResolvedModelPath, *, unsafe: bool) -> LoadedModel:
    """Load a `.keras` or `.h5` file and describe its functional inputs and outputs."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ModelError(
            f"Keras uses the {keras.backend.backend()!r} backend; batchpredict needs "
            "'tensorflow' (unset KERAS_BACKEND or set it to tensorflow)"
        )
    if source.kind == "h5":
        _require_h5_model_config(source.path)
    model = _read_keras_model(source.path, unsafe=unsafe)
    input_struct, output_struct = _keras_structures(model, source.path)
    input_structure, inputs = _keras_tensor_infos(input_struct, source.path)
    output_structure, outputs = _keras_output_infos(model, output_struct, source.path)
    call = _KerasCall(
        model,
        input_structure,
        tuple(info.name for info in inputs),
        tuple(info.name for info in outputs),
    )
    return LoadedModel(source, None, inputs, outputs, call, output_structure)


def _require_h5_model_config(path: str) -> None:
    """Refuse HDF5 files that are not Keras models, or that hold weights only."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            has_config = "model_config" in h5.attrs
    except OSError as err:
        raise ModelError(f"{path} is not a readable HDF5 file: {_first_reason(err)}") from err
    if not has_config:
        raise ModelError(
            f"{path} holds only weights, not a model (no model_config): load them into the "
            "model's code with model.load_weights() and save the whole model with "
            "model.save('model.keras')"
        )


def _read_keras_model(path: str, *, unsafe: bool) -> Any:
    """Run keras.saving.load_model, turning its many failure types into ModelError."""
    import keras

    placeholders: dict[str, Any] = {}
    while True:
        try:
            with warnings.catch_warnings():
                # Keras 2 configs name input_shape on their first layer; Keras 3 still
                # honours it but warns the model's author, who is not the one running this.
                warnings.filterwarnings("ignore", "Do not pass an `input_shape`", UserWarning)
                return keras.saving.load_model(
                    path,
                    compile=False,
                    safe_mode=not unsafe,
                    custom_objects=placeholders or None,
                )
        # Keras raises ValueError, TypeError, KeyError, OSError... from deep inside its
        # deserializer; whatever it is, the model file cannot be used.
        except Exception as err:
            initializer = _FUNCTION_INITIALIZER.search(str(err))
            if initializer is None or initializer.group(1) in placeholders:
                raise _keras_load_error(path, err) from err
            # An initializer only fills weights that are created fresh; load_model then
            # overwrites them all with the saved values, so a stand-in changes no prediction.
            placeholders[initializer.group(1)] = keras.initializers.Zeros()


def _keras_load_error(path: str, err: Exception) -> ModelError:
    """Explain why Keras could not load `path`."""
    import keras

    message = str(err)
    if "Lambda" in message and "safe_mode" in message:
        return ModelError(
            f"{path} has a Lambda layer holding Python code, which is not loaded by default "
            "because loading it runs that code; if you trust the model, pass "
            "--unsafe_model_load"
        )
    for pattern in _MISSING_OBJECT_PATTERNS:
        missing = pattern.search(message)
        if missing:
            return ModelError(
                f"{path} needs custom objects: {missing.group(1)} (not part of Keras "
                f"{keras.__version__}); export the model as a SavedModel with model.export() "
                "where that code is available, and load that instead"
            )
    return ModelError(f"cannot load Keras model {path}: {_first_reason(err)}")


def _keras_structures(model: Any, path: str) -> tuple[Any, Any]:
    """Return the input and output structures (tensor, list or dict) the model was built on."""
    try:
        # Functional models keep the structures they were built with.
        return model.input, model.output
    except (AttributeError, ValueError):
        pass
    try:
        # Sequential models raise above until called; their flat lists are the structure.
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, TypeError, ValueError) as err:
        raise ModelError(
            f"{path} is a Keras model without fixed inputs (a subclassed model?); export it "
            "as a SavedModel with model.export() and load that instead"
        ) from err
    return _unwrap_single(inputs), _unwrap_single(outputs)


def _unwrap_single(tensors: list[Any]) -> Any:
    """Return the only tensor of a one-element list, else the list."""
    return tensors[0] if len(tensors) == 1 else tensors


def _keras_tensor_infos(struct: Any, path: str) -> tuple[str, tuple[TensorInfo, ...]]:
    """Name the tensors of a structure: dict keys, else the tensors' own names."""
    named: Iterable[tuple[str, Any]]
    if isinstance(struct, Mapping):
        structure, named = "dict", struct.items()
    elif isinstance(struct, list | tuple):
        structure, named = "list", ((tensor.name, tensor) for tensor in struct)
    else:
        structure, named = "single", [(struct.name, struct)]
    infos = []
    for name, tensor in named:
        if not hasattr(tensor, "shape"):
            raise ModelError(f"{path} has nested inputs or outputs, which are not supported")
        infos.append(_tensor_info(str(name), tensor.dtype, tensor.shape))
    return structure, tuple(infos)


def _keras_output_infos(model: Any, struct: Any, path: str) -> tuple[str, tuple[TensorInfo, ...]]:
    """Describe the outputs, named by dict key or by the layer that produces them."""
    structure, infos = _keras_tensor_infos(struct, path)
    if structure == "dict":
        return structure, infos
    # Output tensors carry generated names ("keras_tensor_7"); their layers' names are real.
    names = list(getattr(model, "output_names", None) or [model.layers[-1].name])
    if len(names) != len(infos) or len(set(names)) != len(names):
        names = [f"output_{index}" for index in range(len(infos))]
    renamed = tuple(
        TensorInfo(name, info.dtype, info.shape, info.rank_known)
        for name, info in zip(names, infos, strict=True)
    )
    return ("single" if len(renamed) == 1 else "list"), renamed


# ---- SavedModel


@dataclass(frozen=True, eq=False)
class _SignatureCall:
    """Call a SavedModel signature with named tensors."""

    #: The loaded SavedModel: signatures hold only weak references to its variables.
    loaded: Any
    function: Any
    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the signature function; it already returns a dict of named outputs."""
        return dict(self.function(**{name: inputs[name] for name in self.input_names}))


def _load_saved_model(source: ResolvedModelPath, signature: str) -> LoadedModel:
    """Load a SavedModel and reduce it to one of its signatures."""
    loaded = _read_saved_model(source.path)
    available = sorted(loaded.signatures.keys())
    if signature not in available:
        raise ModelError(_missing_signature_message(source.path, signature, available))
    function = loaded.signatures[signature]
    specs = function.structured_input_signature[1]
    outputs_struct = function.structured_outputs
    if function.structured_input_signature[0] or not isinstance(outputs_struct, Mapping):
        raise ModelError(
            f"signature {signature!r} of {source.path} does not take and return named tensors"
        )
    inputs = tuple(_tensor_info(name, spec.dtype, spec.shape) for name, spec in specs.items())
    outputs = tuple(
        _tensor_info(name, tensor.dtype, tensor.shape) for name, tensor in outputs_struct.items()
    )
    call = _SignatureCall(loaded, function, tuple(info.name for info in inputs))
    structure = "single" if len(outputs) == 1 else "dict"
    return LoadedModel(source, signature, inputs, outputs, call, structure)


def _missing_signature_message(path: str, signature: str, available: list[str]) -> str:
    """Say which signatures the SavedModel does have, or that it has none."""
    if not available:
        return (
            f"{path} has no signatures, so there is nothing to serve: it is a TensorFlow 1 "
            "export without signature_def or a model saved without signatures (re-export it "
            "with Keras model.export() or tf.saved_model.save(..., signatures=...))"
        )
    return f"{path} has no signature {signature!r}; available signatures: {', '.join(available)}"


def _read_saved_model(path: str) -> Any:
    """Run tf.saved_model.load, turning its failures into ModelError."""
    import tensorflow as tf

    try:
        try:
            return tf.saved_model.load(path)
        except ValueError as err:
            if "tags" not in str(err):
                raise
            # TF1 exports with several MetaGraphs (training, serving...) need one picked.
            return tf.saved_model.load(path, tags=[tf.saved_model.SERVING])
    # TensorFlow raises OSError, ValueError, AttributeError, its own OpErrors...; whatever
    # it is, this SavedModel cannot be served.
    except Exception as err:
        raise _saved_model_error(path, err) from err


def _saved_model_error(path: str, err: Exception) -> ModelError:
    """Explain why TensorFlow could not load the SavedModel at `path`."""
    import tensorflow as tf

    reason = _first_reason(err)
    header = _saved_model_header(path)
    if header is None:
        return ModelError(
            f"{path} is not a readable SavedModel (corrupt saved_model.pb?): {reason}"
        )
    written_by, is_tf1 = header
    if isinstance(err, tf.errors.NotFoundError | FileNotFoundError) and "variables" in reason:
        return ModelError(f"{path} is incomplete: its variables are missing ({reason})")
    if "add_slot" in str(err):
        return ModelError(
            f"{path} is a Keras 2 SavedModel (TensorFlow {written_by}) with optimizer state, "
            f"which TensorFlow {tf.__version__} restores only when the tf_keras package is "
            "installed (pip install tf_keras); or re-export it without the optimizer"
        )
    if is_tf1:
        why = next((hint for key, hint in _TF1_HINTS if key in str(err)), "")
        return ModelError(
            f"{path} is a TensorFlow 1 SavedModel (written by TensorFlow {written_by}) that "
            f"TensorFlow 2 cannot load, so it cannot be served{': ' + why if why else ''} "
            f"({reason})"
        )
    return ModelError(f"cannot load SavedModel {path}: {reason}")


def _saved_model_header(path: str) -> tuple[str, bool] | None:
    """Return (writing TensorFlow version, is TF1 format), or None if unreadable."""
    import tensorflow as tf

    try:
        # The parser tf.saved_model.load itself uses (for .pb and .pbtxt alike).
        proto = tf.__internal__.saved_model.parse_saved_model(path)
    except OSError:
        return None
    if not proto.meta_graphs:
        return None
    meta_graph = proto.meta_graphs[0]
    # The same test tf.saved_model.load uses to choose between its TF2 and TF1 loaders.
    is_tf1 = len(proto.meta_graphs) != 1 or not meta_graph.HasField("object_graph_def")
    return meta_graph.meta_info_def.tensorflow_version or "unknown", is_tf1


# --------------------------------------------------------------------------- describing


def describe(model: LoadedModel) -> list[str]:
    """Return the lines `batchpredict inspect` prints for a loaded model."""
    source = model.source
    lines = [
        f"path: {source.path}",
        f"kind: {source.kind}",
        f"version: {source.version if source.version is not None else '-'}",
        f"signature: {model.signature or '-'}",
    ]
    lines += [f"input {_describe_tensor(info)}" for info in model.inputs]
    lines += [f"output {_describe_tensor(info)}" for info in model.outputs]
    lines.append(f"output structure: {model.output_structure}")
    return lines


def _describe_tensor(info: TensorInfo) -> str:
    """Format a tensor as `name: dtype [?, 3]`, with ? for open dimensions."""
    if not info.rank_known:
        return f"{info.name}: {info.dtype} (shape unknown)"
    dims = ", ".join("?" if dim is None else str(dim) for dim in info.shape)
    return f"{info.name}: {info.dtype} [{dims}]"
