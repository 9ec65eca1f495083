use sim::*;
fn env(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().map(|v| v.parse().unwrap()).unwrap_or(default)
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).cloned().unwrap_or("bursty-day".into());
    let scale = env("SCALE", 1.0);
    let verbose = env("VERBOSE", 0.0) > 0.0;
    let (mut worst_p50, mut worst_p95r, mut worst_cost, mut worst_p95) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for seed in 1..=5u64 {
        let (trace, mut config) = scenario(&name, seed).unwrap();
        config.warm_fraction = 0.5;
        config.warm_max = 6;
        config.start_s = (config.start_s.0 * scale, config.start_s.1 * scale);
        for p in &mut config.pools { p.extra_start_s *= scale; }
        config.flotilla_idle_timeout_s = env("IDLE", 300.0);
        config.forecast.warm_share = env("WS", config.forecast.warm_share);
        config.forecast.warm_keep_s = env("WKEEP", config.forecast.warm_keep_s);
        config.forecast.pool_keep_s = env("PKEEP", config.forecast.pool_keep_s);
        config.forecast.pool_quantile = env("PQ", config.forecast.pool_quantile);
        config.forecast.pool_refill_s = env("PREFILL", config.forecast.pool_refill_s);
        let outs: Vec<Outcome> = [PolicyKind::FlotillaBefore, PolicyKind::Flotilla, PolicyKind::Semaphore]
            .iter().map(|&p| simulate(&trace, &config, p)).collect();
        let (f, s) = (&outs[1], &outs[2]);
        worst_p50 = worst_p50.max(f.wait_percentile(0.5));
        worst_p95 = worst_p95.max(f.wait_percentile(0.95));
        worst_p95r = worst_p95r.max(f.wait_percentile(0.95) / s.wait_percentile(0.95));
        worst_cost = worst_cost.max(f.cost / s.cost);
        if verbose { println!("seed {seed} jobs {}", trace.len()); print!("{}", table(&outs)); }
    }
    println!("worst: p50 {worst_p50:.1}s p95 {worst_p95:.1}s p95/sem {worst_p95r:.2} cost/sem {worst_cost:.3}");
}
