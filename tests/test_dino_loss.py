"""DINO self-distillation loss: hand-computed value, pair structure and the zero-gradient degenerate pairs."""

import math

import pytest
import torch

from snapvit_cli.scoring.dino_loss import dino_self_distillation_loss


def _softmax_of_normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    exps = [math.exp(v / norm) for v in vector]
    return [e / sum(exps) for e in exps]


def test_matches_explicit_loops_on_a_tiny_case():
    teacher = [[0.3, -1.2, 2.0], [1.5, 0.1, -0.4]]  # G = 2
    student = [[-0.7, 0.9, 0.2], [2.2, -0.3, 1.1], [0.05, 0.6, -1.8]]  # V = 3
    expected = 0.0
    for a in range(2):
        t = _softmax_of_normalised(teacher[a])
        for b in range(3):
            if b != a:
                q = _softmax_of_normalised(student[b])
                expected -= sum(t[e] * math.log(q[e]) for e in range(3))
    loss = dino_self_distillation_loss(torch.tensor([teacher]), torch.tensor([student]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_batch_loss_is_the_mean_over_images():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(3, 2, 8, generator=generator)
    student = torch.randn(3, 5, 8, generator=generator)
    per_image = [dino_self_distillation_loss(teacher[i : i + 1], student[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(dino_self_distillation_loss(teacher, student), torch.stack(per_image).mean())


def test_sums_over_all_two_times_v_minus_one_pairs():
    """With every view embedding equal, each pair contributes the entropy of the same distribution."""
    embedding = torch.tensor([0.4, -1.0, 2.5, 0.3])
    p = torch.softmax(embedding / embedding.norm(), dim=0)
    entropy = -(p * p.log()).sum()
    loss = dino_self_distillation_loss(embedding.expand(1, 2, 4), embedding.expand(1, 12, 4))
    torch.testing.assert_close(loss, 22 * entropy)


def test_identical_teacher_and_student_views_give_zero_gradient_for_their_pair():
    """Reference legacy crops: student view 1 pairs only with teacher view 0 (and vice versa)."""
    generator = torch.Generator().manual_seed(1)
    same = torch.randn(6, generator=generator)
    teacher = same.expand(1, 2, 6).clone().requires_grad_()
    student = torch.cat([same.expand(1, 2, 6), torch.randn(1, 4, 6, generator=generator)], dim=1)
    student.requires_grad_()
    dino_self_distillation_loss(teacher, student).backward()
    torch.testing.assert_close(student.grad[:, :2], torch.zeros(1, 2, 6), rtol=0, atol=1e-7)
    assert student.grad[:, 2:].abs().min() > 0
    assert teacher.grad is None  # the teacher is a fixed target


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        dino_self_distillation_loss(torch.zeros(2, 2, 4), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError):
        dino_self_distillation_loss(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))
