"""The moderation chain: the configured stages, run in order, folded into one ``Decision``.

Built once at start-up (``from_settings``): the policy is loaded and validated and every
configured stage is constructed then, so a bad policy, model directory or blocklist fails the
process before it takes a job. ``prompt_only`` builds just the prompt rules: cheap and
torch-free, for the producer and the CLI.

Failure policy: a stage that raises makes the decision ``block`` with category
``moderation_error`` (fail closed) unless the operator named that stage in
``settings.moderation_fail_open``; then it is recorded as a ``flag`` and the chain goes on.
Stages run in order and stop at the first block: there is no point paying for a model once
the answer is no. The classifier-service stage (safety/moderation_service.py) applies the policy's
own ``fail`` setting to bad answers, and during an outage raises ``ModerationUnavailable``
(transient: the worker re-queues the job, the API answers 503) or, past the policy's wait limit,
``ModerationOutageTooLong``: those two pass through the chain.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from jobs.errors import ModerationOutageTooLong, ModerationUnavailable
from jobs.metrics import moderation_decided
from jobs.settings import Settings
from safety.audit import AuditLog
from safety.input_images import DEFAULT_MAX_BYTES, InputImageStage
from safety.levels import apply_level, relaxable
from safety.normalize import Memo
from safety.policy import Policy, load_policy
from safety.prompt_rules import PromptRules
from safety.verdict import MODERATION_ERROR, Action, Decision, Verdict

log = logging.getLogger(__name__)

STAGE_NAMES = ("prompt_rules", "text_classifier", "input_images", "phash_blocklist", "nsfw_classifier",
               "output_classifier", "safety_checker", "moderation_service")


class PromptStage(Protocol):
    name: str

    def check(self, prompt: str, negative_prompt: str | None = None, *, real_person_context: bool = False) -> list[Verdict]: ...


class ImageStage(Protocol):
    name: str

    def check(self, image: Image.Image) -> list[Verdict]: ...


@dataclass(frozen=True, slots=True)
class InputImageCheck:
    """Result of ``check_input_image``: the decision, the decoded image and the face count.

    Pass ``real_person_context`` on to ``check_prompt`` for the prompt of the same request.
    """

    decision: Decision
    image: Image.Image | None
    faces: int | None

    @property
    def real_person_context(self) -> bool:
        return bool(self.faces)


class ModerationChain:
    """Runs prompt, input-image and output-image stages under one policy."""

    def __init__(
        self,
        policy: Policy,
        *,
        prompt_stages: Sequence[PromptStage],
        input_stage: InputImageStage | None = None,
        output_stages: Sequence[ImageStage] = (),
        fail_open: Iterable[str] = (),
        audit: AuditLog | None = None,
    ) -> None:
        self.policy = policy
        self.prompt_stages = tuple(prompt_stages)
        #: ``Decision.from_verdicts`` under this policy, per distinct tuple of verdicts (a value: a
        #: plan's thousands of prompts get a handful of distinct ones)
        self._decided = Memo(lambda verdicts: Decision.from_verdicts(verdicts, policy.version, policy.messages),
                             size=256)
        #: The policy's own rules stage (``check_prompt(rules_verdicts=)`` stands in for it).
        self.rules = next((s for s in self.prompt_stages if isinstance(s, PromptRules)), None)
        self.input_stage = input_stage
        self.output_stages = tuple(output_stages)
        self.fail_open = frozenset(fail_open)
        self.audit = audit

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def prompt_only(cls, settings: Settings, *, audit: bool = True) -> "ModerationChain":
        """Only the prompt rules: no models, no torch. For the producer, the API and the CLI."""
        policy = load_policy(settings.policy_file)
        return cls(policy, prompt_stages=[PromptRules(policy)], fail_open=settings.moderation_fail_open,
                   audit=AuditLog.from_settings(settings) if audit else None)

    @classmethod
    def producer_side(cls, settings: Settings, *, audit: bool = True) -> "ModerationChain":
        """Prompt rules plus the input-image stage (format, size, faces): still no torch."""
        from safety.faces import HaarFaceDetector

        policy = load_policy(settings.policy_file)
        input_stage = InputImageStage(policy.version, max_pixels=settings.max_pixels, max_bytes=DEFAULT_MAX_BYTES,
                                      face_detector=HaarFaceDetector(), decode_cpu_s=settings.image_decode_cpu_s)
        service = _service_stage(policy, settings, "api")
        return cls(policy, prompt_stages=[PromptRules(policy), *service.prompt], input_stage=input_stage,
                   fail_open=settings.moderation_fail_open,
                   audit=AuditLog.from_settings(settings) if audit else None)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        detect_faces: bool = True,
        max_input_bytes: int = DEFAULT_MAX_BYTES,
        phash_max_distance: int | None = None,
        audit: bool = True,
    ) -> "ModerationChain":
        """Every configured stage. Raises ``ConfigurationError`` at once for any bad piece."""
        unknown = sorted(set(settings.moderation_fail_open) - set(STAGE_NAMES))
        if unknown:
            from jobs.errors import ConfigurationError

            raise ConfigurationError(f"moderation_fail_open names unknown stage(s) {unknown}; stages are {list(STAGE_NAMES)}")
        policy = load_policy(settings.policy_file)
        prompt_stages: list[PromptStage] = [PromptRules(policy)]
        if settings.text_classifier_dir:
            from safety.text_classifier import TextClassifierStage

            prompt_stages.append(TextClassifierStage(settings.text_classifier_dir, policy))
        detector = None
        if detect_faces:
            from safety.faces import HaarFaceDetector

            detector = HaarFaceDetector()
        input_stage = InputImageStage(policy.version, max_pixels=settings.max_pixels,
                                      max_bytes=max_input_bytes, face_detector=detector,
                                      decode_cpu_s=settings.image_decode_cpu_s)
        output_stages: list[ImageStage] = []
        if settings.phash_blocklist:
            from safety.blocklist import DEFAULT_MAX_DISTANCE, PhashBlocklistStage

            output_stages.append(PhashBlocklistStage(
                settings.phash_blocklist, policy,
                max_distance=DEFAULT_MAX_DISTANCE if phash_max_distance is None else phash_max_distance))
        if settings.nsfw_classifier != "off":
            from safety.nsfw_classifier import NsfwClassifierStage

            output_stages.append(NsfwClassifierStage(policy))
        if settings.image_classifier_dir:
            from safety.output_images import ImageClassifierStage

            output_stages.append(ImageClassifierStage(settings.image_classifier_dir, policy))
        if settings.safety_checker_dir:
            from safety.output_images import SafetyCheckerStage

            output_stages.append(SafetyCheckerStage(settings.safety_checker_dir, policy))
        service = _service_stage(policy, settings, "worker")
        prompt_stages += service.prompt
        output_stages += service.output
        return cls(policy, prompt_stages=prompt_stages, input_stage=input_stage, output_stages=output_stages,
                   fail_open=settings.moderation_fail_open,
                   audit=AuditLog.from_settings(settings) if audit else None)

    @property
    def policy_version(self) -> str:
        return self.policy.version

    # -- running ---------------------------------------------------------------------------------
    def _run(self, stages: Sequence[PromptStage | ImageStage], call: Callable[[PromptStage | ImageStage], list[Verdict]],
             level: str | None = None) -> Decision:
        """Every stage in turn until one blocks; ``level`` (``safety/levels.py``): under ``low`` a
        block it relaxes does not stop the later stages (they may find what is never relaxed)."""
        low = (level or "auto") != "auto"
        verdicts: list[Verdict] = []
        for stage in stages:
            try:
                found = call(stage)
            except (ModerationUnavailable, ModerationOutageTooLong):
                raise  # the classifier service is down: the caller holds the job or answers 503
            except Exception as e:  # noqa: BLE001 - any stage failure must become a decision
                failed_open = stage.name in self.fail_open
                log.exception("moderation stage %s failed (%s)", stage.name, "fail open" if failed_open else "fail closed")
                action = Action.FLAG if failed_open else Action.BLOCK
                found = [Verdict(stage.name, MODERATION_ERROR, 1.0, action, self.policy.version, 0, type(e).__name__)]
            verdicts.extend(found)
            if any(v.action is Action.BLOCK and not (low and relaxable(v)) for v in found):
                break
        decision = apply_level(self._decided[tuple(verdicts)], level, self.policy)
        if decision.blocked and decision.blocking_stage and MODERATION_ERROR in decision.categories:
            decision = _with_message(decision, "Moderation could not be completed, so the request was refused. Try again later.")
        moderation_decided(decision.action.value, decision.categories)
        return decision

    def check_prompt(self, prompt: str, negative_prompt: str | None = None, *, real_person_context: bool = False,
                     actor: str | None = None, job_id: str | None = None, audit_allowed: bool = True,
                     level: str | None = None, decided: Decision | None = None,
                     rules_verdicts: Sequence[Verdict] | None = None) -> Decision:
        """Moderate a prompt before any GPU time. ``real_person_context``: a real person's image is
        part of the request (see ``InputImageCheck.real_person_context``). ``audit_allowed=False``
        (a campaign's plan, whose cells are audited when they are submitted) records only flags
        and blocks in the audit log. ``decided``: this chain's decision on the same prompt,
        negative prompt and level, made moments ago without a real person's image (the plan's,
        when a campaign's cells are submitted): recorded, not worked out again. ``rules_verdicts``:
        what the rules stage (``self.rules``) gives this prompt and negative prompt, worked out in
        another process with the same policy (a plan's, ``safety.prompt_pool``): taken as that
        stage's verdicts; the other stages run as usual."""
        if decided is not None and (decided.policy_version != self.policy.version or MODERATION_ERROR in decided.categories):
            decided = None  # another policy's, or a stage that failed (open): worked out again
        if decided is not None:
            decision = decided
            moderation_decided(decision.action.value, decision.categories)  # counted per check, as before
        else:
            if rules_verdicts is not None and (real_person_context or any(
                    v.policy_version != self.policy.version for v in rules_verdicts)):
                rules_verdicts = None  # not this question's answer, or another policy's: worked out here

            def call(stage: PromptStage) -> list[Verdict]:
                if rules_verdicts is not None and stage is self.rules:
                    return list(rules_verdicts)
                return stage.check(prompt, negative_prompt, real_person_context=real_person_context)

            decision = self._run(self.prompt_stages, call, level)  # type: ignore[arg-type]
        if self.audit and (audit_allowed or decision.action is not Action.ALLOW):
            self.audit.record(decision, kind="prompt", actor=actor, job_id=job_id, prompt=prompt,
                              negative_prompt=negative_prompt)
        return decision

    def check_input_image(self, data: bytes, *, actor: str | None = None, job_id: str | None = None) -> InputImageCheck:
        """Validate a reference image; returns the decision, the decoded image and the face count."""
        if self.input_stage is None:
            raise RuntimeError("this chain was built without the input-image stage (use from_settings)")
        result = None

        def call(stage: InputImageStage) -> list[Verdict]:
            nonlocal result
            result = stage.check(data)
            return list(result.verdicts)

        decision = self._run([self.input_stage], call)  # type: ignore[list-item,arg-type]
        if self.audit:
            self.audit.record(decision, kind="input_image", actor=actor, job_id=job_id,
                              subject_sha256=hashlib.sha256(data).hexdigest())
        ok = result is not None and not decision.blocked
        return InputImageCheck(decision, result.image if ok else None, result.faces if ok else None)

    def check_output_image(self, image: Image.Image, *, actor: str | None = None, job_id: str | None = None,
                           level: str | None = None) -> Decision:
        """Moderate one rendered image before it is stored, signed or delivered (at the request's
        moderation ``level``)."""
        decision = self._run(self.output_stages, lambda s: s.check(image), level)  # type: ignore[call-arg,arg-type]
        if self.audit:
            self.audit.record(decision, kind="output_image", actor=actor, job_id=job_id)
        return decision


@dataclass(frozen=True, slots=True)
class _ServiceStages:
    prompt: tuple = ()
    output: tuple = ()


def _service_stage(policy: Policy, settings: Settings, role: str) -> _ServiceStages:
    """The policy's ``moderation_service`` stage (one client, cache and breaker for both uses),
    where the prompts and/or output images go; none when the policy has no such section."""
    cfg = policy.moderation_service
    if cfg is None:
        return _ServiceStages()
    from safety.moderation_service import ModerationServiceStage

    stage = ModerationServiceStage.from_settings(policy, settings, role=role)
    return _ServiceStages(prompt=(stage,) if cfg.on_prompts else (),
                          output=(stage,) if cfg.on_output_images and role == "worker" else ())


def _with_message(decision: Decision, message: str) -> Decision:
    from dataclasses import replace

    return replace(decision, message=message)
