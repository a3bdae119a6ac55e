from __future__ import annotations

import pytest
import torch

from slimkit.errors import BadInputError
from slimkit.packing import pack_bits, pack_signs, packed_length, unpack_bits, unpack_signs, values_per_word


def _int32(pattern: int) -> int:
    """The int32 value holding the 32-bit ``pattern``."""
    return pattern - (1 << 32) if pattern >= 1 << 31 else pattern


def test_words_by_hand() -> None:
    # 4 bits, 8 per word, first value in the least significant nibble; 9 values -> 2 words, padded with 0
    words = pack_bits(torch.arange(1, 10).view(1, 9), 4)
    assert words.dtype == torch.int32
    assert words.tolist() == [[_int32(0x87654321), 9]]
    assert _int32(0x87654321) == -2023406815
    # 3 bits, 10 per word: 1 | 7 << 3 | 0 << 6 | 5 << 9
    assert pack_bits(torch.tensor([1, 7, 0, 5]), 3).tolist() == [1 + (7 << 3) + (5 << 9)]
    # signed 3 bits: -1 -> 0b111, -4 -> 0b100, 3 -> 0b011
    assert pack_bits(torch.tensor([-1, -4, 3]), 3, signed=True).tolist() == [7 + (4 << 3) + (3 << 6)]
    # 8 bits: bit 31 set -> negative int32
    assert pack_bits(torch.tensor([255, 0, 0, 128], dtype=torch.uint8), 8).tolist() == [_int32(0x800000FF)]
    # 1 bit: 32 ones fill a word; a 33rd value starts the next
    assert pack_bits(torch.ones(33, dtype=torch.int64), 1).tolist() == [-1, 1]
    assert pack_bits(torch.tensor([True, False, True]), 1).tolist() == [5]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_round_trip_every_width_and_ragged_lengths(bits: int, signed: bool) -> None:
    per = values_per_word(bits)
    assert per == 32 // bits
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    g = torch.Generator().manual_seed(bits * 2 + signed)
    for length in sorted({1, per - 1, per, per + 1, 37, 3 * per + 2} - {0}):
        values = torch.randint(lo, hi + 1, (2, 3, length), generator=g)
        values[0, 0, 0], values[-1, -1, -1] = lo, hi  # both ends of the range
        words = pack_bits(values, bits, signed=signed)
        assert words.shape == (2, 3, packed_length(length, bits)) == (2, 3, -(-length // per))
        back = unpack_bits(words, bits, length, signed=signed)
        assert back.dtype == (torch.int8 if signed else torch.uint8)
        assert torch.equal(back.to(torch.int64), values)
        assert torch.equal(unpack_bits(words, bits, length, signed=signed, dtype=torch.int64), values)


def test_padding_and_unused_high_bits_are_zero() -> None:
    for bits in (3, 5, 6, 7):
        per = values_per_word(bits)
        words = pack_bits(torch.full((per + 1,), (1 << bits) - 1), bits)
        used = (1 << (per * bits)) - 1
        assert words[0].item() == used  # all used bits set, the 32 - per*bits high bits clear
        assert words[1].item() == (1 << bits) - 1  # one value, rest of the word zero


def test_empty_rows_and_errors() -> None:
    assert pack_bits(torch.zeros(4, 0, dtype=torch.int64), 2).shape == (4, 0)
    assert unpack_bits(torch.zeros(4, 0, dtype=torch.int32), 2, 0).shape == (4, 0)
    with pytest.raises(BadInputError, match=r"\[0, 3\]"):
        pack_bits(torch.tensor([0, 4]), 2)
    with pytest.raises(BadInputError, match=r"\[-2, 1\]"):
        pack_bits(torch.tensor([-3]), 2, signed=True)
    with pytest.raises(BadInputError, match="integer codes"):
        pack_bits(torch.tensor([1.0]), 2)
    with pytest.raises(BadInputError, match="0-d"):
        pack_bits(torch.tensor(1), 2)
    for bad in (0, 9, 2.0):
        with pytest.raises(BadInputError, match=r"1\.\.8"):
            pack_bits(torch.tensor([1]), bad)  # type: ignore[arg-type]
    words = pack_bits(torch.arange(10) % 4, 2)
    with pytest.raises(BadInputError, match="words per row"):
        unpack_bits(words, 2, 17)
    with pytest.raises(BadInputError, match="int32"):
        unpack_bits(words.to(torch.int64), 2, 10)


def test_sign_bits() -> None:
    x = torch.tensor([[0.5, -1.0, 0.0, 2.0, -0.0, -3.0]])
    words = pack_signs(x)
    assert words.tolist() == [[0b011101]]  # bit i = 1 where x[i] >= 0 (sign(0) = +1, also -0.0)
    assert torch.equal(unpack_signs(words, 6), torch.tensor([[1.0, -1.0, 1.0, 1.0, 1.0, -1.0]]))
    pm = torch.where(torch.randn(3, 70, generator=torch.Generator().manual_seed(0)) >= 0, 1.0, -1.0)
    assert torch.equal(unpack_signs(pack_signs(pm), 70, dtype=torch.float32), pm)
    assert pack_signs(pm).shape == (3, 3)
