"""Label sharing (msf_train/labels.py): the plain label table trained as the factorised one."""
import torch

from msf_train.labels import SHAPES_FACTORS, share_label_gradients, shared_gradient


def test_shared_gradient_equals_factorised_table_gradient():
    """SGD on the plain table with the hook == SGD on E[c] = A[shape] + B[palette] + C[texture] + R[c]."""
    torch.manual_seed(0)
    n, D, lr = 1000, 6, 0.1
    A, B, C = (torch.randn(10, D, requires_grad=True) for _ in range(3))
    R = torch.randn(n + 1, D, requires_grad=True)
    c = torch.arange(n)
    pad = torch.zeros(1, D)

    def factorised():
        return R + torch.cat([A[c % 10] + B[(c // 10) % 10] + C[c // 100], pad])

    table = torch.nn.Parameter(factorised().detach().clone())
    share_label_gradients(table, "shapes")
    target = torch.randn(64, D)
    y = torch.randint(0, n + 1, (64,))  # includes the null class
    for _ in range(3):
        ((factorised()[y] - target) ** 2).sum().backward()
        ((table[y] - target) ** 2).sum().backward()
        with torch.no_grad():
            for p in (A, B, C, R, table):
                p -= lr * p.grad
                p.grad = None
    torch.testing.assert_close(table.detach(), factorised().detach(), atol=1e-4, rtol=1e-5)


def test_null_row_and_unrelated_classes_untouched():
    g = torch.zeros(1001, 4)
    g[330] = 1.0  # shape 0, palette 3, texture 3
    out = shared_gradient(g, SHAPES_FACTORS)
    assert torch.equal(out[1000], torch.zeros(4))  # the null class never shares
    assert torch.equal(out[330], torch.full((4,), 4.0))  # its own + three shared sums
    assert torch.equal(out[0], torch.ones(4))  # class 0 shares only the shape (0) with class 330
    assert torch.equal(out[111], torch.zeros(4))  # nothing in common with 330
    assert torch.equal(out[331], torch.full((4,), 2.0))  # same palette and texture


def test_sharing_refuses_a_table_of_another_size():
    import pytest

    from msf_train.errors import MsfError

    with pytest.raises(MsfError, match="needs a model with 1000 classes; this one has 20"):
        share_label_gradients(torch.nn.Parameter(torch.zeros(21, 4)), "shapes")
