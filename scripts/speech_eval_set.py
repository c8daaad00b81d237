#!/usr/bin/env python3
"""Regenerate demo/speech: short English sentences spoken by espeak-ng, 16 kHz mono 16-bit WAV.

Needs Debian's `espeak-ng` and `sox` (apt-get install espeak-ng sox). Each sentence gets a voice
and a speed from fixed lists (round robin, no randomness), so a rerun with the same espeak-ng
gives the same set. Writes demo/speech/NN.wav and demo/speech/eval.jsonl, whose rows are
{"input": "NN.wav", "target": sentence, "voice": ..., "speed": ...} (paths relative to it,
as `edgeseq verify --eval` reads them).

    python3 scripts/speech_eval_set.py [--out demo/speech]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SENTENCES = [
    "The weather is nice today.",
    "Please call Stella at seven thirty tomorrow morning.",
    "Where did you park the car?",
    "The meeting starts at three fifteen in room twelve.",
    "Can you send me the report by Friday?",
    "My phone number is five five five, two one nine eight.",
    "John and Mary moved to Boston last year.",
    "It costs twenty four dollars and fifty cents.",
    "What time does the train leave?",
    "We need three more chairs for the kitchen.",
    "The river flows north for about ninety miles.",
    "Doctor Smith will see you now.",
    "Turn left at the second traffic light.",
    "How many people came to the party?",
    "The package arrived on the fourth of July.",
    "She plays the piano every Sunday afternoon.",
    "Our flight was delayed by two hours.",
    "Is this the way to the train station?",
    "The children are reading books in the library.",
    "I would like a cup of coffee with milk.",
    "The store closes at nine o'clock tonight.",
    "Paris is the capital of France.",
    "Could you repeat the last question, please?",
    "The project will take about six weeks.",
    "He bought a new bicycle for his son.",
    "Open the window, it is too warm in here.",
    "The population grew to one million people.",
    "Why is the sky blue?",
    "Lunch will be served at noon in the garden.",
    "Michael wrote the letter in nineteen ninety five.",
    "Please turn off the lights when you leave.",
    "The dog ran across the field after the ball.",
    "Who is responsible for the budget this year?",
    "We watched the sunset from the top of the hill.",
    "Add two eggs and a spoon of sugar.",
    "The bank is next to the post office.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us+m4", "en+f2"]
SPEEDS = [150, 170, 135, 160, 180, 145]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "demo" / "speech",
                    help="directory to write (default: demo/speech)")
    args = ap.parse_args()
    for tool in ("espeak-ng", "sox"):
        if not shutil.which(tool):
            print(f"error: {tool} not found (apt-get install espeak-ng sox)", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES):
        voice, speed = VOICES[i % len(VOICES)], SPEEDS[i % len(SPEEDS)]
        name = f"{i:02d}.wav"
        # espeak-ng writes 22.05 kHz WAV to stdout; sox resamples to Whisper's 16 kHz mono int16.
        speech = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                                check=True, capture_output=True).stdout
        # Leading/trailing silence is trimmed (keeps the committed set small).
        subprocess.run(["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(args.out / name),
                        "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse"],
                       input=speech, check=True)
        rows.append({"input": name, "target": text, "voice": voice, "speed": speed})
    (args.out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} clips in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
