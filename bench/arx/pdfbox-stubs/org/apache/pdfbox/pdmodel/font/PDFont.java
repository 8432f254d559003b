package org.apache.pdfbox.pdmodel.font;

/** Compile-time stand-in for pdfbox-app-2.0.1.jar, absent from the ARX snapshot (PDF certificates only). */
public abstract class PDFont { }
