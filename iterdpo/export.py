"""The model to take away: the controller's best round as ``<run>/best/``, its model card, the hub, a chat.

    best/                 the merged policy of the best round (safetensors + tokenizer), loadable with
                          plain transformers: AutoModelForCausalLM.from_pretrained("<run>/best")
    best/adapter/         the LoRA adapter that produced it, when the round kept one
    best/README.md        the model card (iterdpo.card): base model, data, rounds, every decision, metrics, usage
    best/export.json      which round and folder it came from
    best/model.gguf       the same model for llama.cpp and Ollama (``export.gguf``; see :func:`write_gguf`)

``export_best(cfg)`` writes all of it as copies (clones where the file system can): nothing written into ``best/``
reaches a round, deleting a round never breaks ``best/``. It pushes to the hub when ``export.push_to_hub`` is on.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
from pathlib import Path
from threading import Thread

from .card import CARD_METRICS, LOCAL_PLACEHOLDER, best_round, model_card  # noqa: F401 (the card's names, as before)
from .config import RunConfig
from .data import render_prompt
from .folder import read_json, write_json
from .progress import live as watched
from .runfolder import RunFolder, StageFiles
from .worlds import world_of

def export_best(cfg: RunConfig) -> Path:
    """Write ``<run>/best/`` (model, adapter, model card) for the best round; push it when configured."""
    rf = RunFolder(cfg.out)
    rnd = best_round(rf.root)
    source = rf.policy(rnd)
    if not rf.has_policy(rnd):
        raise FileNotFoundError(f"round {rnd} has no merged policy at {source}; run the stages first")
    record = {"round": rnd, "policy": str(source), "adapter": str(rf.adapter(rnd)) if rf.adapter(rnd).exists() else None,
              "repair": rf.metrics(rf.repair(rnd)) if rf.repaired(rnd) else None,  # a new repair is a new model
              "gguf": cfg.export.gguf}
    marker = StageFiles(rf.best).export_record
    if not (marker.exists() and read_json(marker) == record):
        tmp = rf.best.with_name(f"best.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, copy_function=_own_copy)
        if record["adapter"]:
            shutil.copytree(rf.adapter(rnd), StageFiles(tmp).adapter, copy_function=_own_copy)
        if cfg.export.gguf:
            print(write_gguf(tmp).replace(str(tmp), str(rf.best)))
        write_json(StageFiles(tmp).export_record, record)
        shutil.rmtree(rf.best, ignore_errors=True)
        os.replace(tmp, rf.best)
    rf.model_card.write_text(model_card(cfg))
    if cfg.export.push_to_hub:
        print(push_to_hub(cfg))
    return rf.best


def _own_copy(src: str, dst: str) -> str:
    """A copy that shares nothing with src, so no write into best/ reaches a round (a hard link did): the file
    system's copy-on-write clone where it has one (copy_file_range clones on btrfs and XFS), else the bytes."""
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            left = os.fstat(fin.fileno()).st_size
            while left > 0 and (n := os.copy_file_range(fin.fileno(), fout.fileno(), left)):
                left -= n
        shutil.copystat(src, dst)
    except (OSError, AttributeError):  # no copy_file_range (not Linux, another file system, FUSE as on Drive)
        shutil.copy2(src, dst)
    return dst


# ---------------------------------------------------------------- GGUF, for llama.cpp and Ollama

GGUF_FILE = "model.gguf"
GGUF_ARCHS = {"LlamaForCausalLM": "LLAMA", "Qwen2ForCausalLM": "QWEN2"}  # what llama.cpp and transformers both read


def write_gguf(folder: str | Path) -> str:
    """``folder/model.gguf`` from the merged safetensors in ``folder``; returns a one-line note of what it wrote.

    f16 (norms and biases f32, as llama.cpp writes them): next to lossless for fp16 or fp32 weights, and what
    llama.cpp's ``llama-quantize`` makes q8_0 or q4_k_m from. The tokenizer goes in when it is a byte-level BPE
    (Qwen's, SmolLM's), which llama.cpp and transformers both read; a word-level one (the toy's) is ``none``."""
    import gguf
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = Path(folder)
    c = AutoConfig.from_pretrained(folder)
    arch = next((GGUF_ARCHS[a] for a in c.architectures or [] if a in GGUF_ARCHS), None)
    rope = getattr(c, "rope_parameters", None) or {"rope_theta": getattr(c, "rope_theta", 10000.0)}
    if arch is None or rope.get("rope_type", "default") != "default":
        return f"gguf skipped: {c.architectures} with rope {rope.get('rope_type')} (GGUF export knows {sorted(GGUF_ARCHS)})"
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    tmp = folder / f"{GGUF_FILE}.tmp-{os.getpid()}"
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]])
    for add, value in [(w.add_context_length, c.max_position_embeddings), (w.add_embedding_length, c.hidden_size),
                       (w.add_block_count, c.num_hidden_layers), (w.add_feed_forward_length, c.intermediate_size),
                       (w.add_head_count, heads), (w.add_head_count_kv, kv_heads), (w.add_vocab_size, c.vocab_size),
                       (w.add_rope_dimension_count, getattr(c, "head_dim", None) or c.hidden_size // heads),
                       (w.add_rope_freq_base, float(rope["rope_theta"])), (w.add_layer_norm_rms_eps, c.rms_norm_eps),
                       (w.add_file_type, gguf.LlamaFileType.MOSTLY_F16)]:
        add(value)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch], c.num_hidden_layers)
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name == "lm_head.weight" and c.tie_word_embeddings:
                    continue
                t = f.get_tensor(name).to(torch.float32)
                if arch == "LLAMA" and name.endswith(("q_proj.weight", "k_proj.weight")):  # llama.cpp's rotary layout
                    n = heads if "q_proj" in name else kv_heads  # (transformers' GGUF loader undoes it)
                    t = t.reshape(n, 2, t.shape[0] // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
                w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")),
                             t.numpy().astype("float16" if t.ndim == 2 else "float32"))
    kind = _gguf_tokenizer(w, folder, c)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, folder / GGUF_FILE)
    return f"wrote {folder / GGUF_FILE}: {arch.lower()}, f16, tokenizer {kind}, {(folder / GGUF_FILE).stat().st_size:,} bytes"


def _gguf_tokenizer(w, folder: Path, c) -> str:
    """The tokenizer's ids, chat template and (byte-level BPE only) vocabulary into the writer; returns its kind."""
    import gguf
    from transformers import AutoTokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = AutoTokenizer.from_pretrained(folder)
    for add, value in [(w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, tok.eos_token_id),
                       (w.add_pad_token_id, tok.pad_token_id), (w.add_unk_token_id, tok.unk_token_id)]:
        if value is not None:
            add(value)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    spec = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").exists() else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        w.add_tokenizer_model("none")
        return "none (not a byte-level BPE)"
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    # ids the model has and the tokenizer never emits (hub models pad their embeddings) stay unused
    tokens, types = [f"[PAD{i}]" for i in range(c.vocab_size)], [gguf.TokenType.UNUSED] * c.vocab_size
    for text, i in {**model["vocab"], **{t["content"]: i for i, t in added.items()}}.items():
        if i < c.vocab_size:
            tokens[i] = text
            types[i] = (gguf.TokenType.NORMAL if i not in added else gguf.TokenType.CONTROL if added[i]["special"]
                        else gguf.TokenType.USER_DEFINED)
    w.add_tokenizer_model("gpt2")
    qwen2 = json.dumps(PRETOKENIZE_REGEX)[1:-1] in json.dumps(spec["pre_tokenizer"])  # Qwen's own split of text
    w.add_tokenizer_pre("qwen2" if qwen2 else "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    w.add_add_bos_token(tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id])
    return "gpt2 (byte-level BPE)"


def push_to_hub(cfg: RunConfig) -> str:
    """Upload best/ to the hub; a one-line note instead when offline or not logged in. Returns that line."""
    rf = RunFolder(cfg.out)
    if not rf.best.exists():
        return f"push_to_hub skipped: {rf.best} does not exist yet (export_best first)"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "push_to_hub skipped: HF_HUB_OFFLINE=1"
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        user = api.whoami()["name"]
        repo = cfg.export.hub_model_id or f"{user}/iterdpo-{cfg.preset}-s{cfg.seed}"
        api.create_repo(repo, exist_ok=True, private=True)
        rf.model_card.write_text(model_card(cfg, repo))  # the card names the repo it is read from
        api.upload_folder(folder_path=str(rf.best), repo_id=repo, ignore_patterns=["export.json"])
    except Exception as e:  # no network, no token, no permission: the run itself is complete
        return f"push_to_hub skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return f"pushed {rf.best} to https://huggingface.co/{repo} (private)"


def push_note(cfg: RunConfig) -> str:
    """What the quickstart's hub cell does: push when export.push_to_hub is on, else say how to turn it on."""
    if not cfg.export.push_to_hub:
        return 'push_to_hub is off: set overrides {"export.push_to_hub": True} (and log in with huggingface_hub) to upload best/'
    return push_to_hub(cfg)


# ---------------------------------------------------------------- chatting with it

class Chat:
    """The exported model with plain transformers: ``Chat(path).reply("list 3 fruit")``, or ``stream`` for the text
    as it is generated; both take the conversation so far (``history``: role/content messages)."""

    def __init__(self, path: str | Path, max_new_tokens: int = 256, temperature: float = 0.7, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        dtype = torch.float16 if torch.cuda.is_available() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed

    def encode(self, messages: list[dict]) -> tuple[dict, int]:
        """(model inputs, new tokens): the conversation in the chat template, its oldest exchanges dropped until
        it and the reply fit the model's positions (the reply gets at most half of them)."""
        limit = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        new = min(self.max_new_tokens, limit // 2)
        while True:
            enc = self.tok(render_chat(self.tok, messages), return_tensors="pt", add_special_tokens=False)
            if enc["input_ids"].shape[1] + new <= limit or len(messages) <= 1:
                return {k: v[:, -(limit - new):].to(self.model.device) for k, v in enc.items()}, new
            messages = messages[2:]

    def stream(self, text: str, history: list[dict] = ()):
        """The reply to ``text`` after ``history``, piece by piece as it is generated (sampled, seeded)."""
        import torch
        from transformers import TextIteratorStreamer

        enc, new = self.encode([*history, {"role": "user", "content": text}])
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        torch.manual_seed(self.seed)

        def generate():
            try:
                self.model.generate(**enc, max_new_tokens=new, do_sample=True, temperature=self.temperature,
                                    streamer=streamer, pad_token_id=self.tok.pad_token_id)
            finally:  # a failed generation still ends the stream: the reader would wait forever
                streamer.end()

        worker = Thread(target=generate)
        worker.start()
        yield from streamer
        worker.join()

    def reply(self, text: str, history: list[dict] = ()) -> str:
        """The whole reply to ``text`` after ``history``."""
        return "".join(self.stream(text, history)).strip()


def render_chat(tok, messages: list[dict]) -> str:
    """A conversation as the prompt for the assistant's next turn (data.render_prompt: the chat template, else
    HH-RLHF's transcript)."""
    return render_prompt(messages, tok)


def example_prompts(cfg: RunConfig, n: int = 5) -> list[str]:
    """User messages to try: the world's own (the toy world's task, or a few general ones)."""
    return world_of(cfg).example_prompts(cfg, n)


def chat(cfg: RunConfig, prompts: list[str] | None = None, live: bool | None = None, max_new_tokens: int = 256):
    """A chat box with best/ when the notebook is live (multi-turn, the reply streamed as it is generated);
    replies to fixed prompts, each a new conversation, as a table otherwise."""
    import pandas as pd

    bot = Chat(RunFolder(cfg.out).best, max_new_tokens=max_new_tokens, seed=cfg.seed)
    if not (watched() if live is None else live):
        prompts = prompts or example_prompts(cfg)
        return pd.DataFrame({"you": prompts, "model": [bot.reply(p) for p in prompts]}).set_index("you")
    import ipywidgets as w

    box = w.Text(placeholder="Type a message and press Enter", continuous_update=False, layout=w.Layout(width="80%"))
    clear, log, history = w.Button(description="New chat"), w.HTML(), []

    def send(change):
        if not (text := change["new"].strip()):
            return
        box.value, answer, before = "", "", log.value + f"<p><b>you</b>: {html.escape(text)}<br><b>model</b>: "
        for piece in bot.stream(text, history):
            answer += piece
            log.value = before + html.escape(answer) + "</p>"
        history.extend([{"role": "user", "content": text}, {"role": "assistant", "content": answer.strip()}])

    box.observe(send, names="value")
    clear.on_click(lambda _: (history.clear(), setattr(log, "value", "")))
    return w.VBox([w.HBox([box, clear]), log])


if __name__ == "__main__":  # python -m iterdpo.export <run folder>: export a finished run
    sys.exit(print(export_best(RunFolder(sys.argv[1]).config())))
