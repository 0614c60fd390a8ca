"""How fast this machine is right now: 8 SFT steps (batch 8, fp32) of the embedded model on 60 built-in facts,
three times. The same CPU type ran these at different speeds on different days; quoted beside every timed run."""
import time
import warnings

warnings.filterwarnings("ignore")
from sftnb.config import SFTConfig
from sftnb.data.builtin import load_builtin
from sftnb.lm.models import load_model
from sftnb.sft import train

facts = [f for f in load_builtin().facts if f.split == "train"][:60]
model, tok = load_model("smollm2-135m", device="cpu", dtype="float32")
state = {k: v.clone() for k, v in model.state_dict().items()}
for i in range(3):
    model.load_state_dict(state)
    rep = train(model, tok, [(f.question, f.answers[0]) for f in facts], SFTConfig(precision="fp32"), seed=0, progress=False)
    print(f"8 SFT steps: {rep.seconds:.2f} s", flush=True)
