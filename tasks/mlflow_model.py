"""The final model as an MLflow pyfunc: a wrapper around an NVILA checkpoint directory (logged as an artifact).

`mlflow.pyfunc.load_model(uri).predict(df)` takes a DataFrame with a `prompt` column and an optional `image`
column (image file paths) and returns the generated answers. The checkpoint is the pipeline's own directory
(`config.json`, `model.safetensors`, processor files; quantized exports too), so the registry holds exactly
what the stages produced. The device is the model config's `device` (default auto: cuda when available), e.g.
`mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})`.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

CHECKPOINT = "checkpoint"


class NVILAPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the NVILA model and processor from the logged checkpoint; answers prompts greedily."""

    def __init__(self, max_new_tokens: int = 16) -> None:
        self.max_new_tokens = max_new_tokens

    def load_context(self, context: Any) -> None:
        from nvila_model.checkpoint import load_checkpoint  # plain, fine-tuned or quantized directories alike
        from nvila_model.device import resolve_device

        config = context.model_config or {}
        self.device = resolve_device(config.get("device", "auto"), "model_config.device")
        self.model, self.processor = load_checkpoint(context.artifacts[CHECKPOINT], self.device)

    # `model_input` is left unannotated: MLflow reads a type hint there as a schema to validate against, and the
    # input (a DataFrame or rows of prompt/image) is validated by the logged signature instead.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[str]:  # noqa: ANN001
        import torch
        from PIL import Image

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        answers = []
        for row in rows:
            image = row.get("image")
            image = image if isinstance(image, str) and image else None  # a DataFrame holds a missing image as NaN
            text = ("<image>\n" if image else "") + str(row["prompt"])
            batch = self.processor.encode(
                [{"from": "human", "value": text}], images=[Image.open(image)] if image else None,
                add_generation_prompt=True,
            )
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=batch["input_ids"][None].to(self.device),
                    pixel_values=batch["pixel_values"].to(self.device), media_layout=batch["media_layout"],
                    max_new_tokens=self.max_new_tokens, do_sample=False,
                )
            new_tokens = out[0, batch["input_ids"].shape[0]:] if out.shape[1] > batch["input_ids"].shape[0] else out[0]
            answers.append(self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
        return answers


# Models from code: `mlflow.pyfunc.log_model(python_model=<this file>)` runs it and takes this model.
mlflow.models.set_model(NVILAPyfunc())
