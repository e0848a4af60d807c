"""Corpora: manifests, the embedded synthetic corpus, LibriSpeech/AudioSet loaders, mels.

* :mod:`.manifest` -- the manifest CSV contract (``read_manifest``, ``write_manifest``,
  ``resolve_path``, ``write_rejects``);
* :mod:`.validate` -- ``check_audio_file``: the bad-input checks every loader uses;
* :mod:`.synth` (+ :mod:`.synth_speech`, :mod:`.synth_events`, :mod:`.sentences`) --
  the embedded corpus (``agrepa data synth``);
* :mod:`.librispeech`, :mod:`.audioset`, :mod:`.folder`, :mod:`.merge` -- real corpora;
* :mod:`.mels` -- the log-mel store and its train-split statistics (``load_stats``).
"""
