"""Callbacks for the Trainer: Pass@k^(m) on a small problem set while training."""

from collections.abc import Sequence

from accelerate.utils import broadcast_object_list, gather_object
from transformers import Trainer, TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from ..code_eval import score
from ..generation.prompting import PromptFormat, build_programs, resolve_prompt_mode
from ..generation.sampling import TEMPERATURE, TOP_P
from ..generation.vllm_generation import generate_samples_with, resolve_backend


class PassAtKMCallback(TrainerCallback):
    """Every `every_n_steps` optimizer steps, or with every evaluation, sample, execute and log Pass@k^(m) on
    `problems`.

    Generation is split across processes; the main process runs the programs in the sandbox, and
    every process logs the same values through `trainer.log`, under keys `eval_pass@{k}^({m})`
    (e.g. `eval_pass@1^(1)`, `eval_pass@5^(5)`).

    ```python
    >>> trainer = IBSFTTrainer(...)
    >>> trainer.add_callback(PassAtKMCallback(trainer, problems, k=[1, 5], m=[1, "k"], num_samples=5))
    ```

    Args:
        trainer: the Trainer this callback is added to; its `processing_class` must be a tokenizer.
        problems: dicts with keys prompt, test, entry_point (HumanEval layout;
            `trl_ib.code_eval.problem_sets.load_problems` reads them from a file, a dataset or a VerilogEval directory).
        k, m: the Pass@k^(m) pairs to log; "k" in `m` means m = k.
        num_samples: n, samples per problem, at least max(k).
        every_n_steps: evaluate when `global_step` is a multiple of this. None: with every `trainer.evaluate()`
            (the evaluations of `eval_strategy`, and the one at the end of a hyperparameter-search trial), whose
            metrics then include these, so that `hyperparameter_search` can optimize and prune on them.
        prompt_mode: "completion", "chat" or "auto" (`trl_ib.generation.prompting`; auto looks at the trainer's
            tokenizer and the model's `name_or_path`).
        language, instruction_prefix, response_prefix, temperature, top_p, max_new_tokens, stop_sequences,
            batch_size, timeout, num_workers: as in `ib-ft eval`.
        backend: what samples: hf (`generate_samples` on the model being trained, split across processes), vllm (an
            engine built at each evaluation from the model as it stands, merged into a copy and saved to a temporary
            folder: `trl_ib.generation.vllm_generation.serving`; one process) or auto: vllm where it is installed
            and one process trains, else hf.
        vllm_kwargs: `vllm.LLM` arguments for the vllm backend; its dtype defaults to the trainer's mixed precision
            (bf16 or fp16), else the weights' dtype. On a GPU the trainer holds memory that vLLM's default
            `gpu_memory_utilization` (0.9) would claim: give a smaller one.
    """

    def __init__(
        self,
        trainer: Trainer,
        problems: Sequence[dict],
        k: Sequence[int] = (1,),
        m: Sequence[int | str] = (1,),
        num_samples: int = 1,
        every_n_steps: int | None = 100,
        language: str = "python",
        prompt_mode: str = "auto",
        instruction_prefix: str | None = None,
        response_prefix: str | None = None,
        temperature: float = TEMPERATURE,
        top_p: float = TOP_P,
        max_new_tokens: int = 256,
        stop_sequences: Sequence[str] | None = None,
        batch_size: int = 16,
        timeout: float = 3.0,
        num_workers: int | None = None,
        backend: str = "auto",
        vllm_kwargs: dict | None = None,
    ):
        if num_samples < max(k):
            raise ValueError(f"num_samples={num_samples} is smaller than max(k)={max(k)}; need n >= k")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} is invalid; give a step interval >= 1, or None")
        self.trainer = trainer
        self.problems = list(problems)
        self.k, self.m, self.num_samples, self.every_n_steps = list(k), list(m), num_samples, every_n_steps
        self.timeout, self.num_workers = timeout, num_workers
        self.backend = resolve_backend(backend, trainer.accelerator.num_processes)
        precision = {"dtype": "bfloat16"} if trainer.args.bf16 else {"dtype": "float16"} if trainer.args.fp16 else {}
        self.vllm_kwargs = {**precision, **(vllm_kwargs or {})}
        prompt_mode = resolve_prompt_mode(
            prompt_mode, trainer.processing_class, getattr(trainer.model, "name_or_path", "")
        )
        self.prompt_format = PromptFormat(prompt_mode, language, instruction_prefix, response_prefix)
        self.generation = dict(
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            stop_sequences=stop_sequences,
            batch_size=batch_size,
            prompt_format=self.prompt_format,
        )
        self._last_step = -1

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_step = -1  # a new run (a search's next trial) counts its steps from 0 again

    def on_step_end(self, args, state, control, **kwargs):
        if (
            self.every_n_steps is None
            or state.global_step % self.every_n_steps
            or state.global_step == self._last_step
        ):
            return
        self._last_step = state.global_step
        self.trainer.log(self.evaluate())

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.every_n_steps is None and metrics is not None:
            values = self.evaluate()
            metrics.update(values)  # the dict `trainer.evaluate()` returns, already logged without these
            self.trainer.log(values)

    def evaluate(self) -> dict[str, float]:
        """{"eval_pass@{k}^({m})": value} for the current model, identical on every process."""
        accelerator = self.trainer.accelerator
        with accelerator.split_between_processes(self.problems) as problems:
            # under the trainer's mixed precision (bf16 autocast where IBSFTConfig.bf16, the dtype rule's default)
            with unwrap_model_for_generation(self.trainer.model_wrapped, accelerator) as model, accelerator.autocast():
                prompts = [problem["prompt"] for problem in problems]
                completions = generate_samples_with(
                    self.backend,
                    model,
                    self.trainer.processing_class,
                    prompts,
                    self.num_samples,
                    **self.generation,
                    llm_kwargs=self.vllm_kwargs,
                )
        completions = gather_object(completions)  # [problem][sample], all processes, problem order
        metrics = None
        if accelerator.is_main_process:
            prompts = [problem["prompt"] for problem in self.problems]
            entry_points = [problem["entry_point"] for problem in self.problems]
            programs = build_programs(prompts, completions, self.prompt_format, entry_points)
            tests = [problem["test"] for problem in self.problems]
            scores = score(
                programs,
                tests,
                entry_points,
                self.k,
                self.m,
                self.prompt_format.language,
                self.timeout,
                self.num_workers,
                progress=False,
            )
            metrics = {f"eval_{name}": value for name, value in scores.table.items()}
        return broadcast_object_list([metrics])[0]
