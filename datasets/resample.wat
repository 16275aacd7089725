;; Fixed-point separable resampling passes with 128-bit SIMD, the hot loops of
;; datasets/preprocess.ts (same integer arithmetic as its JS reference:
;; acc = 2^21 + sum(pixel * weight), value = clamp(acc >> 22, 0, 255)).
;; Compiled by tools/build_resample_wasm.ts into datasets/resample_wasm.ts.
;;
;; Buffers are byte offsets into the exported memory. Tap tables are i32:
;; starts[i] (first input index), counts[i] (taps), weights[i * wstride + k].
;; Both passes write whole 4- or 16-byte groups, so the caller leaves 16 bytes
;; of slack after src, tmp and dst; extra bytes written past a row are
;; rewritten by the next row.
(module
  (memory (export "memory") 1)

  ;; clamp(acc >> 22, 0, 255) of 16 accumulators, packed to 16 bytes
  (func $pack16 (param $a0 v128) (param $a1 v128) (param $a2 v128) (param $a3 v128) (result v128)
    (i8x16.narrow_i16x8_u
      (i16x8.narrow_i32x4_u (call $clamp (local.get $a0)) (call $clamp (local.get $a1)))
      (i16x8.narrow_i32x4_u (call $clamp (local.get $a2)) (call $clamp (local.get $a3)))))

  (func $clamp (param $a v128) (result v128)
    (i32x4.min_s
      (i32x4.max_s (i32x4.shr_s (local.get $a) (i32.const 22)) (v128.const i32x4 0 0 0 0))
      (v128.const i32x4 255 255 255 255)))

  ;; Horizontal pass on interleaved RGB rows: rows x cols output pixels.
  ;; src rows are srcStride bytes apart; dst rows are cols * 3 bytes.
  (func (export "hpass")
    (param $src i32) (param $srcStride i32) (param $rows i32) (param $cols i32)
    (param $starts i32) (param $counts i32) (param $weights i32) (param $wstride i32)
    (param $dst i32)
    (local $r i32) (local $i i32) (local $k i32) (local $n i32) (local $p i32)
    (local $wp i32) (local $rowBase i32) (local $o i32) (local $acc v128) (local $v v128)
    (local.set $o (local.get $dst))
    (local.set $r (i32.const 0))
    (block $rdone
      (loop $rloop
        (br_if $rdone (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $rowBase
          (i32.add (local.get $src) (i32.mul (local.get $r) (local.get $srcStride))))
        (local.set $i (i32.const 0))
        (block $idone
          (loop $iloop
            (br_if $idone (i32.ge_u (local.get $i) (local.get $cols)))
            (local.set $p
              (i32.add (local.get $rowBase)
                (i32.mul
                  (i32.load (i32.add (local.get $starts) (i32.shl (local.get $i) (i32.const 2))))
                  (i32.const 3))))
            (local.set $n
              (i32.load (i32.add (local.get $counts) (i32.shl (local.get $i) (i32.const 2)))))
            (local.set $wp
              (i32.add (local.get $weights)
                (i32.shl (i32.mul (local.get $i) (local.get $wstride)) (i32.const 2))))
            (local.set $acc (v128.const i32x4 2097152 2097152 2097152 2097152))
            (local.set $k (i32.const 0))
            (block $kdone
              (loop $kloop
                (br_if $kdone (i32.ge_u (local.get $k) (local.get $n)))
                (local.set $acc
                  (i32x4.add (local.get $acc)
                    (i32x4.mul
                      (i32x4.extend_low_i16x8_u
                        (i16x8.extend_low_i8x16_u (v128.load32_zero (local.get $p))))
                      (i32x4.splat (i32.load (local.get $wp))))))
                (local.set $p (i32.add (local.get $p) (i32.const 3)))
                (local.set $wp (i32.add (local.get $wp) (i32.const 4)))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $kloop)))
            (local.set $v (call $clamp (local.get $acc)))
            (local.set $v
              (i8x16.narrow_i16x8_u
                (i16x8.narrow_i32x4_u (local.get $v) (local.get $v))
                (i16x8.narrow_i32x4_u (local.get $v) (local.get $v))))
            ;; 4 bytes: R G B and one byte the next pixel overwrites
            (i32.store (local.get $o) (i32x4.extract_lane 0 (local.get $v)))
            (local.set $o (i32.add (local.get $o) (i32.const 3)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $iloop)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rloop))))

  ;; Vertical pass: outRows rows of rowLen bytes; starts are row indices into tmp.
  (func (export "vpass")
    (param $tmp i32) (param $rowLen i32) (param $outRows i32) (param $starts i32)
    (param $counts i32) (param $weights i32) (param $wstride i32) (param $dst i32)
    (local $j i32) (local $c i32) (local $k i32) (local $n i32) (local $p i32) (local $wp i32)
    (local $base i32) (local $wbase i32) (local $o i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $w v128) (local $lo v128) (local $hi v128) (local $px v128)
    (local.set $j (i32.const 0))
    (block $jdone
      (loop $jloop
        (br_if $jdone (i32.ge_u (local.get $j) (local.get $outRows)))
        (local.set $base
          (i32.add (local.get $tmp)
            (i32.mul
              (i32.load (i32.add (local.get $starts) (i32.shl (local.get $j) (i32.const 2))))
              (local.get $rowLen))))
        (local.set $n
          (i32.load (i32.add (local.get $counts) (i32.shl (local.get $j) (i32.const 2)))))
        (local.set $wbase
          (i32.add (local.get $weights)
            (i32.shl (i32.mul (local.get $j) (local.get $wstride)) (i32.const 2))))
        (local.set $o (i32.add (local.get $dst) (i32.mul (local.get $j) (local.get $rowLen))))
        (local.set $c (i32.const 0))
        (block $cdone
          (loop $cloop
            (br_if $cdone (i32.ge_u (local.get $c) (local.get $rowLen)))
            (local.set $a0 (v128.const i32x4 2097152 2097152 2097152 2097152))
            (local.set $a1 (local.get $a0))
            (local.set $a2 (local.get $a0))
            (local.set $a3 (local.get $a0))
            (local.set $p (i32.add (local.get $base) (local.get $c)))
            (local.set $wp (local.get $wbase))
            (local.set $k (i32.const 0))
            (block $kdone
              (loop $kloop
                (br_if $kdone (i32.ge_u (local.get $k) (local.get $n)))
                (local.set $w (i32x4.splat (i32.load (local.get $wp))))
                (local.set $px (v128.load (local.get $p)))
                (local.set $lo (i16x8.extend_low_i8x16_u (local.get $px)))
                (local.set $hi (i16x8.extend_high_i8x16_u (local.get $px)))
                (local.set $a0 (i32x4.add (local.get $a0)
                  (i32x4.mul (i32x4.extend_low_i16x8_u (local.get $lo)) (local.get $w))))
                (local.set $a1 (i32x4.add (local.get $a1)
                  (i32x4.mul (i32x4.extend_high_i16x8_u (local.get $lo)) (local.get $w))))
                (local.set $a2 (i32x4.add (local.get $a2)
                  (i32x4.mul (i32x4.extend_low_i16x8_u (local.get $hi)) (local.get $w))))
                (local.set $a3 (i32x4.add (local.get $a3)
                  (i32x4.mul (i32x4.extend_high_i16x8_u (local.get $hi)) (local.get $w))))
                (local.set $p (i32.add (local.get $p) (local.get $rowLen)))
                (local.set $wp (i32.add (local.get $wp) (i32.const 4)))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $kloop)))
            (v128.store (i32.add (local.get $o) (local.get $c))
              (call $pack16 (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)))
            (local.set $c (i32.add (local.get $c) (i32.const 16)))
            (br $cloop)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $jloop))))
)
