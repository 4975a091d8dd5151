"""The workflow catalog: ComfyUI graphs with typed, validated parameter contracts.

A workflow is a pair of files in a workflow directory (`workflows/` and any directory listed in
`workflow_dirs`): `<capability>/<id>.json`, an API-format graph as exported by ComfyUI's
"Save (API)", and `<capability>/<id>.yaml`, its contract. Dropping a pair in makes it available;
`Catalog.reload()` (`comfyfleet workflows reload`) picks it up without a restart.

Contract (every key optional except `parameters`' targets)::

    id: sd15-basic                 # default: the YAML file's name
    title: SD1.5 text to image
    description: ...
    capability: text_to_image      # routing capability; default: the folder's name
    graph: sd15-basic.json         # default: <yaml name>.json beside the YAML
    outputs: [Save image]          # nodes whose files are the job's outputs;
                                   # default: the graph's Save*/Preview* nodes
    models: {checkpoints: [...]}   # fixed models the graph needs, beyond `model` parameters
    parameters:
      width:
        type: int                  # string | int | float | bool | seed | image | model
        default: 512
        min: 64
        max: 2048
        multiple_of: 8
        description: Image width in pixels.
        targets:                   # or, for one target: `node: Empty latent` + `input: width`
          - {node: Empty latent, input: width}
      sampler:
        type: string
        choices: [euler, dpmpp_2m]
        node: KSampler
        input: sampler_name

Nodes are addressed by `_meta.title` where the graph has titles, by node id otherwise (an
ambiguous title is an error). `type` may be left out when it follows from the default, the
graph's value, or the input (`ckpt_name` -> model in `checkpoints`, `LoadImage.image` -> image,
`seed`/`noise_seed` -> seed).

The old service's form loads too, unchanged: a contract YAML with `workflow_file` +
`parameter_mapping: {param: {node_id, input_name, default_value}}`, or its whole config file
(`task_types.<capability>.workflows.<name>...`) given as a catalog source;
`comfyfleet config import-legacy OLD.yaml` converts it to this form.

Priority of values: **request > fleet-wide default > contract default > the graph's value**.
The fleet-wide default (`defaults.<workflow id>.<param>` in comfyfleet.yaml) sits above the
contract's default on purpose: the contract is shipped with the workflow and describes it in
general ("SD1.5 at 512x512, 20 steps"), while the fleet default is the operator's statement about
this fleet ("our CPU nodes: 64x64, 2 steps"). If the contract won, a fleet default could only fill
parameters the contract left without a default, and an operator could not adapt a bundled
workflow without editing it. A request still beats both.

Seeds: a `seed` parameter given as -1, or left out (with no fleet/contract default), becomes a
random seed when the request is validated; the seed actually used is in the resolved params (and
so recorded with the job).

Models: a `model` parameter's value may be a logical name (`sd15`); the fleet's model map
(`models:` in comfyfleet.yaml, e.g. `sd15: v1-5-pruned-emaonly.safetensors`) turns it into this
fleet's file name. `Workflow.required_models` lists folder -> file names after that mapping.

Image parameters (`type: image`, e.g. SVD's and img2img's input image): the value is the name of
a file already present in the node's input folder (`name.png` or `subfolder/name.png`). The
caller uploads the image first (POST /upload/image, content-hash file name), then renders with
that name; `RenderedPrompt.images` lists these values so the caller knows what must be present.

Validation happens twice: statically at load (links point at existing nodes, every mapped
node/input exists and is a value, defaults fit their types, bounds and choices; errors name the
file, parameter and node) and live against a node (`Workflow.check_against(object_info,
models)`: every class_type is installed, each mapped input's type and bounds agree with
ComfyUI's, combo choices exist, required models are present). Requests are validated by
`Workflow.validate` / `render` before any node is touched (`ParamError` names the parameter,
the value and the allowed range or choices).
"""

from comfyfleet.catalog.catalog import Catalog
from comfyfleet.catalog.errors import CatalogError, ParamError, UnknownWorkflowError
from comfyfleet.catalog.legacy import LegacyImport, import_legacy
from comfyfleet.catalog.live import InputInfo, NodeFacts, fetch_node_facts, input_info
from comfyfleet.catalog.params import ParamSpec, Target
from comfyfleet.catalog.workflow import RenderedPrompt, Workflow

__all__ = [
    "Catalog",
    "CatalogError",
    "InputInfo",
    "LegacyImport",
    "NodeFacts",
    "ParamError",
    "ParamSpec",
    "RenderedPrompt",
    "Target",
    "UnknownWorkflowError",
    "Workflow",
    "fetch_node_facts",
    "import_legacy",
    "input_info",
]
