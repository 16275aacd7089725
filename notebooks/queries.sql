-- vitq example queries. Tables: runs, results, layers, fp_baselines, id_sets, images,
-- predictions. Views: flips, pairwise.

-- results: Top-1 of every stored cell next to its FP32 baseline
select label, model, w_bits, a_bits, calib_seed, round(top1, 2) as top1,
       round(fp_top1, 2) as fp_top1, round(fp_top1 - top1, 2) as drop
  from results where status = 'ok'
 order by model, w_bits desc, label, calib_seed;

-- flips: share of images whose prediction changed against FP32 (a PTQ diagnostic)
select label, model, w_bits, a_bits, round(avg(flip_rate) * 100, 2) as flip_pct
  from flips group by all order by model, w_bits desc, flip_pct;

-- pairwise: discordant counts between methods on the same images and calibration set
select label_a, label_b, model, w_bits, a_bits, n, only_a, only_b, round(diff_points, 2) as diff
  from pairwise where label_a < label_b order by model, w_bits desc, diff desc;

-- layers: the weakest quantized weights by SQNR (dB)
select r.label, r.w_bits, l.site, l.tensor, round(l.sqnr_db, 1) as sqnr_db
  from layers l join results r using (cell_id)
 where l.tensor = 'weight' order by l.sqnr_db limit 20;

-- images most often misclassified across all cells of a manifest
select i.image_id, i.label, count(*) as wrong
  from predictions p join results r using (cell_id)
  join images i on i.eval_hash = r.eval_hash and i.image_idx = p.image_idx
 where p.true_rank > 0 group by all order by wrong desc limit 20;

-- calibration seed spread per method (mean and std of Top-1 over seeds)
select label, model, w_bits, a_bits, count(*) as seeds, round(avg(top1), 2) as mean,
       round(stddev_samp(top1), 3) as std
  from results where status = 'ok' group by all order by model, w_bits desc, mean desc;
