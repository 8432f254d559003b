package org.apache.hadoop.io;

/** Compile-time stand-in for hadoop-core-1.2.1.jar, absent from the ARX snapshot; only mahout's classifiers (not anonymization) touch it. */
public interface Writable {
    void write(java.io.DataOutput out) throws java.io.IOException;
    void readFields(java.io.DataInput in) throws java.io.IOException;
}
