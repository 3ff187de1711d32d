//go:build !purego

#include "textflag.h"

// func unmaskSIMD(dst, src []byte, key uint32)
//
// dst[i] = src[i] ^ byte(key >> (8 * (i % 4))) for i < len(src), with AVX2.
//
// Registers: SI src, DI dst, CX bytes left, AX the key as due at SI
// (rotated as single bytes are done), R8 that key twice (64 bits), Y0 that
// key in all eight lanes, DX the bytes to do one by one at the start
// (first 1, then 2, 4, 8 and 16, by its bits) so that the stores of the
// main loop land at 32-byte aligned addresses.
//
// Every block is loaded in full before any of it is stored, and blocks go
// from low to high addresses: a dst at or before src (in-place unmasking)
// only overwrites bytes already read. For the same reason the end is done
// by smaller and smaller steps, never by an overlapping last block.
TEXT ·unmaskSIMD(SB), NOSPLIT, $0-52
	MOVQ dst_base+0(FP), DI
	MOVQ src_base+24(FP), SI
	MOVQ src_len+32(FP), CX
	MOVL key+48(FP), AX

	// Align only payloads long enough for the main loop to pay for it.
	XORQ DX, DX
	CMPQ CX, $64
	JB   head
	MOVQ DI, DX
	NEGQ DX
	ANDQ $31, DX

head:
	TESTQ $1, DX
	JZ    head2
	MOVB  (SI), BX
	XORB  AX, BX
	MOVB  BX, (DI)
	INCQ  SI
	INCQ  DI
	DECQ  CX
	RORL  $8, AX

head2:
	TESTQ $2, DX
	JZ    keys
	MOVW  (SI), BX
	XORW  AX, BX
	MOVW  BX, (DI)
	ADDQ  $2, SI
	ADDQ  $2, DI
	SUBQ  $2, CX
	RORL  $16, AX

keys:
	// From here on every step is a multiple of 4 bytes until the last
	// 1 to 3: the key's phase stays put.
	MOVL         AX, R8
	SHLQ         $32, R8
	ORQ          AX, R8
	MOVQ         R8, X0
	VPBROADCASTQ X0, Y0

	TESTQ $4, DX
	JZ    head8
	MOVL  (SI), BX
	XORL  AX, BX
	MOVL  BX, (DI)
	ADDQ  $4, SI
	ADDQ  $4, DI
	SUBQ  $4, CX

head8:
	TESTQ $8, DX
	JZ    head16
	MOVQ  (SI), BX
	XORQ  R8, BX
	MOVQ  BX, (DI)
	ADDQ  $8, SI
	ADDQ  $8, DI
	SUBQ  $8, CX

head16:
	TESTQ   $16, DX
	JZ      loop128
	VPXOR   (SI), X0, X1
	VMOVDQU X1, (DI)
	ADDQ    $16, SI
	ADDQ    $16, DI
	SUBQ    $16, CX

loop128:
	CMPQ    CX, $128
	JB      loop32
	VPXOR   (SI), Y0, Y1
	VPXOR   32(SI), Y0, Y2
	VPXOR   64(SI), Y0, Y3
	VPXOR   96(SI), Y0, Y4
	VMOVDQU Y1, (DI)
	VMOVDQU Y2, 32(DI)
	VMOVDQU Y3, 64(DI)
	VMOVDQU Y4, 96(DI)
	ADDQ    $128, SI
	ADDQ    $128, DI
	SUBQ    $128, CX
	JMP     loop128

loop32:
	CMPQ    CX, $32
	JB      tail16
	VPXOR   (SI), Y0, Y1
	VMOVDQU Y1, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DI
	SUBQ    $32, CX
	JMP     loop32

tail16:
	CMPQ    CX, $16
	JB      tail8
	VPXOR   (SI), X0, X1
	VMOVDQU X1, (DI)
	ADDQ    $16, SI
	ADDQ    $16, DI
	SUBQ    $16, CX

tail8:
	CMPQ CX, $8
	JB   tail4
	MOVQ (SI), BX
	XORQ R8, BX
	MOVQ BX, (DI)
	ADDQ $8, SI
	ADDQ $8, DI
	SUBQ $8, CX

tail4:
	CMPQ CX, $4
	JB   tail1
	MOVL (SI), BX
	XORL AX, BX
	MOVL BX, (DI)
	ADDQ $4, SI
	ADDQ $4, DI
	SUBQ $4, CX

tail1:
	TESTQ CX, CX
	JZ    done
	MOVB  (SI), BX
	XORB  AX, BX
	MOVB  BX, (DI)
	INCQ  SI
	INCQ  DI
	DECQ  CX
	RORL  $8, AX
	JMP   tail1

done:
	VZEROUPPER
	RET
