import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

import org.deidentifier.arx.ARXAnonymizer;
import org.deidentifier.arx.ARXConfiguration;
import org.deidentifier.arx.ARXLattice.ARXNode;
import org.deidentifier.arx.ARXResult;
import org.deidentifier.arx.AttributeType;
import org.deidentifier.arx.AttributeType.Hierarchy;
import org.deidentifier.arx.Data;
import org.deidentifier.arx.criteria.DistinctLDiversity;
import org.deidentifier.arx.criteria.KAnonymity;
import org.deidentifier.arx.metric.Metric;

/**
 * ARX's side of bench/anonymization_bench.py --arx: times ARX's optimal (Flash) search on the same Adult data and
 * hierarchies as ppml, in one JVM, so that the two engines are measured side by side on the same cores.
 *
 * <pre>
 * java -cp CLASSES:bench/arx ArxBench DATA.csv WARMUPS RUNS -h NAME=HIERARCHY.csv ... SPEC ...
 * SPEC = k,suppression[,sensitive,l]   e.g. 5,0.05   or   5,0.0,occupation,3
 * (no SPEC: read one SPEC a line from stdin and answer each with its JSON line)
 * </pre>
 *
 * Every attribute given a hierarchy is a quasi-identifier except a spec's sensitive attribute (distinct
 * l-diversity); other columns are insensitive. The quality model is ARX's default Loss metric, as in ppml.
 * Each timed run is anonymize() plus getOutput() (ARX's released handle), the counterpart of ppml's anonymize(df,
 * config) returning a DataFrame; the input handle is released between runs outside the timing. One JSON line per
 * spec goes to stdout: the median and all wall times, the median CPU time of this (the only working) thread, which
 * a loaded machine disturbs less than wall time, ARX's optimum per attribute and its loss.
 */
public final class ArxBench {

    private ArxBench() {
    }

    public static void main(String[] args) throws Exception {
        File dataFile = new File(args[0]);
        int warmups = Integer.parseInt(args[1]);
        int runs = Integer.parseInt(args[2]);
        Map<String, Hierarchy> hierarchies = new LinkedHashMap<>();
        List<String> specs = new ArrayList<>();
        for (int i = 3; i < args.length; i++) {
            if (args[i].equals("-h")) {
                String[] pair = args[++i].split("=", 2);
                hierarchies.put(pair[0], Hierarchy.create(new File(pair[1]), StandardCharsets.UTF_8, ';'));
            } else {
                specs.add(args[i]);
            }
        }
        if (specs.isEmpty()) { // interactive: one spec a line, so that the caller can interleave its own runs
            int answered = 0;
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            for (String line = in.readLine(); line != null; line = in.readLine()) {
                if (!line.isBlank()) {
                    // the JIT is warm after the first configuration: one warm-up run each for the later ones
                    System.out.println(run(dataFile, hierarchies, line.trim(), answered++ == 0 ? warmups
                            : Math.min(warmups, 1), runs));
                    System.out.flush();
                }
            }
            return;
        }
        for (String spec : specs) {
            System.out.println(run(dataFile, hierarchies, spec, warmups, runs));
            System.out.flush();
        }
    }

    /** Warm-up runs, then RUNS timed runs of one configuration; returns its JSON line. */
    private static String run(File dataFile, Map<String, Hierarchy> hierarchies, String spec, int warmups, int runs)
            throws Exception {
        String[] parts = spec.split(",");
        int k = Integer.parseInt(parts[0]);
        double suppression = Double.parseDouble(parts[1]);
        String sensitive = parts.length > 2 ? parts[2] : null;
        int l = parts.length > 3 ? Integer.parseInt(parts[3]) : 0;

        Data data = Data.create(dataFile, StandardCharsets.UTF_8, ';');
        for (int c = 0; c < data.getHandle().getNumColumns(); c++) {
            String name = data.getHandle().getAttributeName(c);
            if (name.equals(sensitive)) {
                data.getDefinition().setAttributeType(name, AttributeType.SENSITIVE_ATTRIBUTE);
            } else if (hierarchies.containsKey(name)) {
                data.getDefinition().setAttributeType(name, hierarchies.get(name));
            } else {
                data.getDefinition().setAttributeType(name, AttributeType.INSENSITIVE_ATTRIBUTE);
            }
        }
        ARXConfiguration config = ARXConfiguration.create();
        config.addPrivacyModel(new KAnonymity(k));
        if (sensitive != null) {
            config.addPrivacyModel(new DistinctLDiversity(sensitive, l));
        }
        config.setSuppressionLimit(suppression);
        config.setQualityModel(Metric.createLossMetric());
        config.setAlgorithm(ARXConfiguration.AnonymizationAlgorithm.OPTIMAL);

        ARXAnonymizer anonymizer = new ARXAnonymizer();
        double[] times = new double[runs];
        double[] cpu = new double[runs];
        ThreadMXBean threads = ManagementFactory.getThreadMXBean();
        ARXResult result = null;
        for (int i = 0; i < warmups + runs; i++) {
            data.getHandle().release();
            long cpuStarted = threads.getCurrentThreadCpuTime();
            long started = System.nanoTime();
            result = anonymizer.anonymize(data, config);
            result.getOutput(false);
            long elapsed = System.nanoTime() - started;
            long cpuElapsed = threads.getCurrentThreadCpuTime() - cpuStarted;
            if (i >= warmups) {
                times[i - warmups] = elapsed / 1e9;
                cpu[i - warmups] = cpuElapsed / 1e9;
            }
        }
        return json(spec, times, cpu, result);
    }

    private static double median(double[] values) {
        double[] sorted = values.clone();
        Arrays.sort(sorted);
        int n = sorted.length;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }

    /** Formats one configuration's result by hand (the harness needs no JSON library on the classpath). */
    private static String json(String spec, double[] times, double[] cpu, ARXResult result) {
        int n = times.length;
        StringBuilder out = new StringBuilder();
        out.append(String.format(Locale.ROOT, "{\"spec\": \"%s\", \"median_s\": %.6f, \"cpu_median_s\": %.6f, "
                + "\"times\": [", spec, median(times), median(cpu)));
        for (int i = 0; i < n; i++) {
            out.append(String.format(Locale.ROOT, "%s%.6f", i == 0 ? "" : ", ", times[i]));
        }
        out.append("], \"transformation\": {");
        ARXNode optimum = result.getGlobalOptimum();
        if (optimum != null) {
            String[] names = optimum.getQuasiIdentifyingAttributes();
            for (int i = 0; i < names.length; i++) {
                out.append(String.format(Locale.ROOT, "%s\"%s\": %d", i == 0 ? "" : ", ", names[i],
                        optimum.getGeneralization(names[i])));
            }
            out.append(String.format(Locale.ROOT, "}, \"loss\": %s, \"checked\": %d}",
                    optimum.getHighestScore().toString(), // the aggregate Loss
                    result.getProcessStatistics().getTransformationsChecked()));
        } else {
            out.append("}, \"loss\": null, \"checked\": 0}");
        }
        return out.toString();
    }
}
