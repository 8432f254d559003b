package org.apache.pdfbox.pdmodel;

/** Compile-time stand-in for pdfbox-app-2.0.1.jar, absent from the ARX snapshot; ARX only uses it to print PDF certificates. */
public class PDDocument implements java.io.Closeable {
    public static PDDocument load(java.io.File file) throws java.io.IOException { throw new java.io.IOException("pdfbox stub"); }
    public static PDDocument load(java.io.InputStream in) throws java.io.IOException { throw new java.io.IOException("pdfbox stub"); }
    public void save(java.io.OutputStream out) throws java.io.IOException { throw new java.io.IOException("pdfbox stub"); }
    public void save(java.io.File file) throws java.io.IOException { throw new java.io.IOException("pdfbox stub"); }
    public void close() throws java.io.IOException { }
}
