"""The page's words: the introduction and each tab's explanation (Markdown)."""

INTRO = """# Your LLM knows the future — multi-token prediction with mask tokens
An ordinary language model writes one token per forward pass. Append **k mask tokens** after the text and
the same model, with a small gated-LoRA fine-tune, also guesses the k tokens *after* the next one. The
model then checks its own guesses (speculative decoding): greedy output stays **exactly** the same, it just
needs fewer forward passes. Based on Samragh et al., *Your LLM Knows the Future* (arXiv 2507.11851)."""

EXPLAIN = {
    "heatmap": """**What you see.** Each row is a future offset: +1 is the token *after* the next one, +k the
token k steps after it. Cells are the model's top candidates, coloured by probability; the orange box marks
the token plain greedy decoding really writes there, and the row label gives its rank in the full
distribution. **Left:** the untouched base model with k placeholder tokens `-` appended (gate off) — it
often ranks the future token surprisingly high already: the paper's *LLM knows the future* probe.
**Middle:** the learned mask tokens read out through the same `lm_head`. **Right:** the sampler head,
which chains the guesses (each conditioned on the one before) so they form a coherent sequence — exactly
the drafts decoding verifies, scored over the top 64 candidates of each mask's `lm_head` row (rank 65: the
token was not among them). **Below:** the
*draft tree* the same masks propose (4 nodes per mask): the most probable paths through each mask's top
candidates. Green is the path greedy decoding would accept — when a chain's guess is wrong at some depth, a
sibling in the tree is often right, so the tree keeps more.""",
    "accept": """**What you see.** Each forward pass verifies the previous pass's drafts against the model's own
next-token choices: the longest matching prefix is **accepted** (green), the rest **rejected** (red, struck
through, never part of the output), and the model's own token after the accepted ones comes for free as the
**bonus** (blue). *Linear* drafts again only after a pass that accepted everything; *quadratic* appends a
mask group after every draft so fresh drafts survive any rejection. Drag the slider to replay step by step.
**Draft trees:** with a node budget, each pass verifies a tree of the masks' top candidates instead of one
chain — when the top guess at some depth is wrong, a sibling often is right, so the accepted path goes
deeper. The plot draws the tree of the step you replay to: the accepted path in green, rejected branches in
red, the bonus token in blue. This tab shows the masks' own drafts; looked-up drafts (copies of earlier
text, and of what the model wrote after the same few words in its training answers: the datastore) are a
toggle.""",
    "race": """**What you see.** The same prompt decoded greedily in up to five lanes: *autoregressive* (one
forward pass per token), *linear*, the paper's *quadratic* layout (a mask group after every draft, so fresh
drafts survive any rejection), the same layout verifying a *draft tree* of the masks' top candidates (a
wrong top guess is often rescued by a sibling) and the checkpoint's *measured default* for this device (often fewer mask groups plus
prompt-lookup and datastore drafts: cheaper passes on a small CPU). Each lane names its settings. **The lanes are timed
first**, one after another at full speed with nothing drawn in the page, so your browser never competes
with the measurement; then they are **replayed side by side at their true pace**. One race runs at a time:
a second visitor waits for the machine (the other tabs stay usable). The check at the bottom compares the
token sequences; the plot below it shows why MTP is faster, here and on a GPU.""",
    "lossless": """**Why it is lossless.** The LoRA update is multiplied by a gate that is 1 only at mask positions
and 0 at real tokens, and real tokens never attend to masks. So appending masks leaves every real token's
logits *exactly* as the base model computes them: Δ = 0. Force the gate on everywhere and the LoRA changes
the real tokens too — the base model's answers would drift (the paper reports plain LoRA losing accuracy).""",
    "train": """**Train your own.** A short fine-tune of the embedded model: the base model first answers a few
prompts itself (self-distillation), then the masks, gated LoRA and sampler learn to predict those answers
several tokens ahead. Losses: `loss_base` (cross-entropy of lm_head at the masks), `loss_sampler` (the
sampler head), `loss_lcm` (latent consistency with the real token's hidden state). One run at a time on this
server; everyone sees it. When it finishes, pick the new checkpoint in Settings and try the other tabs.
A few dozen CPU steps will not beat the shipped checkpoint — it is about watching it learn.""",
}

SPEED_NOTE = """**Measured or predicted?** The stars are measured: each lane's tokens/s in this race (after its
first token, the prefill that every method shares). The lines are predicted: this prompt's exact τ at every k
(replayed from one teacher-forced pass over the autoregressive output) priced by the bench's cost curve of
one forward pass per shape — on the left as measured on this kind of CPU, on the right for a device where a
verify pass costs what a 1-token pass does, as on a GPU, where τ turns almost fully into speed. The predictions assume an otherwise idle machine;
other work on its cores lowers the measured stars."""
