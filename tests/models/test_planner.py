"""The dry run's planner against a hand computation (the worked example in models/README.md)."""

from tests.helpers import run_script


def test_planner_equals_a_hand_computation_for_the_flagship_on_8_h100s(tmp_path):
    result = run_script("models/gpt.py", "--preset", "1b", "--dry_run", "--gpus", "8",
                        "--gpu_type", "H100", "--hours", "24", "--tokens", "2e10",
                        "--price_per_gpu_hour", "2.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # By hand: 6 FLOPs per matmul weight (24 blocks of q, k, v, o: 4 x 1536^2, and SwiGLU's
    # 3 x 1536 x 6144; the head 1536 x 50,304) plus 12 x layers x width x context for attention.
    flops = 6 * (24 * (4 * 1536**2 + 3 * 1536 * 6144) + 1536 * 50304) + 12 * 24 * 1536 * 1024
    assert flops == 6_352_404_480
    params = 1_060_578_816
    tokens_per_second = 8 * 989e12 * 0.4 / flops  # 8 H100s at 40% of 989 TFLOP/s
    assert round(tokens_per_second) == 498_205
    assert f"  {tokens_per_second:,.0f} tokens/s = 8 x 989e12 FLOP/s x 0.4 / 6,352,404,480" in out
    day = tokens_per_second * 24 * 3600
    assert f"in 24 hours: {day:,.0f} tokens = {day / params:.1f} tokens per parameter" in out
    assert round(day / params, 1) == 40.6  # twice the compute-optimal 20
    hours = 2e10 / tokens_per_second / 3600
    assert f"20,000,000,000 tokens (--tokens): {hours:.1f} hours, {8 * hours:.1f} GPU-hours" in out
    run_hours = 100_000 * 294_912 / tokens_per_second / 3600  # max_iters x tokens per step
    assert f"{run_hours:.1f} hours, {8 * run_hours:.0f} GPU-hours" in out
    optimal = 20 * params
    optimal_hours = optimal / tokens_per_second / 3600
    assert f"about 20 tokens per parameter, {optimal:,} tokens: {optimal_hours:.1f} hours" in out
    assert (f"cost at $2.50 per GPU-hour: 24 hours ${24 * 8 * 2.5:,.2f}, --tokens "
            f"${hours * 8 * 2.5:,.2f}, this configuration ${run_hours * 8 * 2.5:,.2f}") in out
